"""Serving benchmark 2, "What serving costs": the service under concurrent load, against its two limits.

    .venv/bin/python -m bench.serving [--repository model_repository] [--quick]

1. Sweep: `bnfold serve` (a real subprocess on loopback; equivalence policy off, dynamic batching on with the
   default 0 ms delay) on the zoo repository; every zoo model, V2 binary and JSON, 1/4/16/32/64 requests in
   flight, each point measured over stable windows (bench.http_load), and V2 gRPC with raw contents on the same
   server's gRPC port (bench.grpc_load, one channel per request in flight). Limits in the same run: the bare ASGI
   POST handler on the same uvicorn (the HTTP floor, with the largest zoo JSON body) and onnxruntime in
   process on the same model (the compute limit).
2. Batching: a ResNet-18-sized network at 224×224 (tests.nets.reference_nets.resnet18, folded and exported by
   `bnfold fold-and-export` into a temporary repository), binary requests at 64 in flight, batching on vs off.
3. Equivalence: policy off vs `sample` (1%) vs `always` on digits_resnet (throughput at 32 in flight, p50 at 1)
   and on the ResNet-18 network (p50 at 1, against the unfolded model's in-process run time).

Prints markdown tables and the targets (met / not met); saves bench/results/serving.json. Every answer is
checked against onnxruntime in process before its server is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import machine_description, markdown_table, save_results
from bench.grpc_load import measure_grpc
from bench.http_load import Target, measure
from bench.processes import BIN, ROOT, bare_server, bnfold_serve
from bench.serving_inputs import check_answers, folded_session, in_process_limits, model_requests
from bench.serving_targets import report_targets

CONCURRENCIES = (1, 4, 16, 32, 64)
TARGET_ROUNDS = 3
ZOO = ("breast_cancer_mlp", "digits_autoencoder", "digits_mobilenet", "digits_resnet")


def build_zoo(out: Path) -> Path:
    subprocess.run([str(BIN / "bnfold"), "build-default", "--out", str(out)], check=True, capture_output=True)
    return out


def build_resnet(out: Path) -> Path:
    # A package.module SPEC is imported with the working directory first on sys.path: run from the project root.
    command = [str(BIN / "bnfold"), "fold-and-export", "--model", "tests.nets.reference_nets:resnet18"]
    command += ["--input-shape", "1,3,224,224", "--name", "resnet18", "--task", "classification", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sweep(repository: Path, models: tuple[str, ...], concurrencies: tuple[int, ...], window: float) -> dict:
    """Every model × binary/JSON × concurrency against one server; at each concurrency the floor (bare ASGI
    server, alive alongside) is measured first, so each ratio compares measurements seconds apart. The target
    concurrency (32) is measured in TARGET_ROUNDS interleaved rounds and the median round kept."""
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    requests = {model: model_requests(repository, model) for model in models}
    largest = max(requests.values(), key=lambda r: len(r.json))
    with bnfold_serve(repository, equivalence_policy="off") as server, bare_server() as bare:
        for model in models:
            check_answers(server.port, requests[model], server.grpc_port)
        for concurrency in concurrencies:
            for _ in range(TARGET_ROUNDS if concurrency == 32 else 1):
                result = measure(Target(bare.port, largest.json, bare.pid), concurrency, window)
                runs.setdefault(("floor", "json", concurrency), []).append(result.to_json())
                log(f"floor c={concurrency}: {result.throughput_rps:.0f}/s p50 {result.p50_ms:.2f}")
                for model in models:
                    for kind in ("binary", "json", "grpc"):
                        port = server.grpc_port if kind == "grpc" else server.port
                        target = Target(port or 0, getattr(requests[model], kind), server.pid)
                        result = (measure_grpc if kind == "grpc" else measure)(target, concurrency, window)
                        runs.setdefault((model, kind, concurrency), []).append(result.to_json())
                        log(f"{model} {kind} c={concurrency}: {result.throughput_rps:.0f}/s p50 {result.p50_ms:.2f}")
    rows = [{"model": m, "kind": k, **_median(found)} for (m, k, _), found in runs.items() if m != "floor"]
    floor = [_median(found) for (m, _, _), found in runs.items() if m == "floor"]
    threads = max(1, (os.cpu_count() or 1) // (2 * len(os.listdir(repository))))
    compute = {model: in_process_limits(repository / model, threads, 1) for model in models}
    return {"rows": rows, "floor": floor, "floor_body_bytes": len(largest.json), "in_process": compute}


def _median(found: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput (all rounds kept under 'rounds')."""
    ranked = sorted(found, key=lambda row: row["throughput_rps"])
    return {**ranked[len(ranked) // 2], "rounds": [row["throughput_rps"] for row in found]}


def batching(repository: Path, window: float) -> dict:
    """ResNet-18 at 224×224, binary, 64 in flight: dynamic batching on vs off (same server otherwise)."""
    requests = model_requests(repository, "resnet18")
    results: dict[str, Any] = {}
    for label, enabled in (("batching", "true"), ("no batching", "false")):
        with bnfold_serve(repository, equivalence_policy="off", dynamic_batching=enabled) as server:
            check_answers(server.port, requests)
            result = measure(Target(server.port, requests.binary, server.pid), 64, window, max_windows=6)
            results[label] = result.to_json()
            log(f"resnet18 {label} c=64: {result.throughput_rps:.1f}/s p50 {result.p50_ms:.0f} ms")
    results["in_process"] = {
        "batch 1": in_process_limits(repository / "resnet18", 1, 1, 4.0),
        "batch 32": in_process_limits(repository / "resnet18", 1, 32, 6.0),
    }
    return results


def equivalence_costs(zoo: Path, resnet: Path | None, window: float, rounds: int = 5) -> dict:
    """Policies off / sample 1% / always on digits_resnet: three servers alive at once, measured in `rounds`
    interleaved rounds (off, sample, always, off, …), median round kept — throughput at 32, p50 at 1.
    ResNet-18: p50 at 1 with policy off and always (interleaved the same way, 2 rounds)."""
    requests = model_requests(zoo, "digits_resnet")
    policies = {"off": {}, "sample": {"equivalence_sample_rate": "0.01"}, "always": {}}
    out: dict[str, Any] = {"digits_resnet": _interleaved(zoo, requests, policies, rounds, window, (32, 1))}
    out["digits_resnet"]["unfolded_in_process_p50_ms"] = _unfolded_p50(zoo / "digits_resnet", 1)
    if resnet is not None:
        big = model_requests(resnet, "resnet18")
        out["resnet18"] = _interleaved(resnet, big, {"off": {}, "always": {}}, 2, max(window, 2.0), (1,))
        out["resnet18"]["unfolded_in_process_p50_ms"] = _unfolded_p50(resnet / "resnet18", 1)
    return out


def _interleaved(
    repository: Path, requests: Any, policies: dict[str, dict[str, str]], rounds: int, window: float, levels: tuple
) -> dict[str, Any]:
    found: dict[str, dict[str, list[dict[str, Any]]]] = {p: {f"c{c}": [] for c in levels} for p in policies}
    with ExitStack() as stack:
        servers = {
            policy: stack.enter_context(bnfold_serve(repository, equivalence_policy=policy, **extra))
            for policy, extra in policies.items()
        }
        names = list(servers)
        for round_index in range(rounds):  # rotated order, so no policy always runs first (bench.common's rule)
            shift = round_index % len(names)
            for policy in names[shift:] + names[:shift]:
                server = servers[policy]
                for concurrency in levels:
                    result = measure(Target(server.port, requests.binary, server.pid), concurrency, window)
                    found[policy][f"c{concurrency}"].append(result.to_json())
                    log(
                        f"equivalence {requests.model} {policy} c={concurrency}: {result.throughput_rps:.1f}/s "
                        f"p50 {result.p50_ms:.2f} ms"
                    )
    return {policy: {level: _median(rows) for level, rows in by_level.items()} for policy, by_level in found.items()}


def _unfolded_p50(entry: Path, threads: int) -> float:
    import statistics
    import time

    from bench.serving_inputs import calibration_inputs

    session = folded_session(entry, threads, "unfolded")
    inputs = calibration_inputs(entry, 1)
    times = []
    for _ in range(30):
        start = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times[5:]) * 1000


def print_tables(results: dict) -> None:
    sweep_result = results["sweep"]
    floor = {row["concurrency"]: row for row in sweep_result["floor"]}
    header = ["model", "request", "in flight", "req/s", "% of floor", "p50 ms", "p90 ms", "p99 ms", "stable"]
    header += ["client CPU µs/req", "server CPU µs/req"]
    rows = [_sweep_row(row, floor) for row in sweep_result["rows"]]
    rows += [_sweep_row({"model": "(bare ASGI floor)", "kind": "json", **row}, floor) for row in sweep_result["floor"]]
    print("\n### Serving sweep (zoo, batch 1, policy off)\n")
    print(markdown_table(header, rows))
    print("\n### In-process onnxruntime (compute limit, folded, batch 1)\n")
    compute = sweep_result["in_process"]
    print(
        markdown_table(
            ["model", "p50 ms", "throughput /s (all cores)"],
            [[m, f"{v['p50_ms']:.3f}", f"{v['throughput_sps']:.0f}"] for m, v in compute.items()],
        )
    )
    if "batching" in results:
        print("\n### ResNet-18 at 224×224, binary, 64 in flight\n")
        batch_rows = []
        for label in ("batching", "no batching"):
            row = results["batching"][label]
            batch_rows.append([label, f"{row['throughput_rps']:.1f}", f"{row['p50_ms']:.0f}", f"{row['p99_ms']:.0f}"])
        for label, limit in results["batching"]["in_process"].items():
            batch_rows.append([f"in process, {label}", f"{limit['throughput_sps']:.1f}", f"{limit['p50_ms']:.0f}", ""])
        print(markdown_table(["server", "images/s", "p50 ms", "p99 ms"], batch_rows))
    report_targets(results)


def _sweep_row(row: dict, floor: dict[int, dict]) -> list[str]:
    share = row["throughput_rps"] / floor[row["concurrency"]]["throughput_rps"] if floor else float("nan")
    server_cpu = row.get("server_cpu_us")
    return [
        row["model"],
        row["kind"],
        str(row["concurrency"]),
        f"{row['throughput_rps']:.0f}",
        f"{100 * share:.0f}%",
        f"{row['p50_ms']:.2f}",
        f"{row['p90_ms']:.2f}",
        f"{row['p99_ms']:.2f}",
        "yes" if row["stable"] else "no",
        f"{row['client_cpu_us']:.0f}",
        "" if server_cpu is None else f"{server_cpu:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="zoo repository (default: build one in a temp dir)")
    parser.add_argument("--quick", action="store_true", help="one model, 1/32 in flight, no ResNet-18 (smoke run)")
    parser.add_argument("--window", type=float, default=1.0, help="measurement window in seconds (default 1)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bnfold-serving-") as temporary:
        work = Path(temporary)
        zoo = arguments.repository or build_zoo(work / "zoo")
        models = ("digits_resnet",) if arguments.quick else ZOO
        concurrencies = (1, 32) if arguments.quick else CONCURRENCIES
        results: dict[str, Any] = {"machine": machine_description(cores=os.cpu_count(), quick=arguments.quick)}
        results["sweep"] = sweep(zoo, models, concurrencies, arguments.window)
        resnet = None if arguments.quick else build_resnet(work / "resnet")
        if resnet is not None:
            results["batching"] = batching(resnet, max(arguments.window, 3.0))
        results["equivalence"] = equivalence_costs(zoo, resnet, arguments.window)
        results["targets"] = report_targets(results, quiet=True)
        print_tables(results)
        path = save_results("serving_quick" if arguments.quick else "serving", results)
        print(f"\nsaved {path}")
        json.dumps(results)


if __name__ == "__main__":
    main()
