"""Benchmark: `bnfold serve --workers 1` against `--workers 2` on digits_resnet, V2 JSON, 32 requests in flight.

    .venv/bin/python -m bench.workers [--repository model_repository] [--rounds 5] [--window 1.0]

Both servers are alive side by side (equivalence policy off, as in bench.serving's sweep); each round measures
both with bench.http_load's closed loop, in rotated order (bench.common's rule), and the median round is kept.
The machine's load average is printed and saved per round (the machine may be shared). Resident memory is
read per worker process (VmRSS) after the rounds; the 2-worker row also names the supervisor's own RSS.
Results: bench/results/workers.json and the table in docs/load.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import machine_description, markdown_table, save_results
from bench.http_load import Target, measure
from bench.processes import Server, bnfold_serve
from bench.serving import build_zoo
from bench.serving_inputs import model_requests

MODEL = "digits_resnet"
CONCURRENCY = 32
WORKER_COUNTS = (1, 2)
WORKER_HEADER = b"x-bnfold-worker:"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def answering_pid(port: int) -> tuple[int, int | None]:
    """(status, X-Bnfold-Worker pid or None) of GET /v2/health/ready on a fresh connection."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head and (chunk := sock.recv(4096)):
            head += chunk
    pid = next(
        (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(WORKER_HEADER)), None
    )
    return int(head[9:12]), pid


def worker_pids(server: Server, workers: int, timeout: float = 300) -> list[int]:
    """The pids serving: the process itself for one worker; for N, wait until N workers have answered ready."""
    if workers == 1:
        return [server.pid]
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only workers {sorted(seen)} answered ready within {timeout} s")
        status, pid = answering_pid(server.port)
        if status == 200 and pid is not None:
            seen.add(pid)
    return sorted(seen)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def run(repository: Path, rounds: int, window: float) -> dict[str, Any]:
    request = model_requests(repository, MODEL).json
    found: dict[int, list[dict[str, Any]]] = {n: [] for n in WORKER_COUNTS}
    loads = [{"before": load_average()}]
    with ExitStack() as stack:
        servers = {
            n: stack.enter_context(bnfold_serve(repository, equivalence_policy="off", workers=str(n)))
            for n in WORKER_COUNTS
        }
        pids = {n: worker_pids(servers[n], n) for n in WORKER_COUNTS}
        for round_index in range(rounds):
            shift = round_index % len(WORKER_COUNTS)
            for n in WORKER_COUNTS[shift:] + WORKER_COUNTS[:shift]:
                result = measure(Target(servers[n].port, request), CONCURRENCY, window).to_json()
                found[n].append(result)
                log(f"round {round_index} workers={n}: {result['throughput_rps']:.1f}/s p50 {result['p50_ms']:.2f} ms")
            loads.append({f"after_round_{round_index}": load_average()})
            log(f"load average {load_average()}")
        memory = {n: {str(pid): round(rss_mib(pid), 1) for pid in pids[n]} for n in WORKER_COUNTS}
        supervisor = round(rss_mib(servers[2].pid), 1)
    return {"rounds": found, "load_average": loads, "rss_mib": memory, "supervisor_rss_mib": supervisor}


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians per worker count, and the median of the per-round ratios 2 workers / 1 worker (the two runs of
    a round are adjacent in time, so the ratio cancels much of a shared machine's drift)."""
    rounds = {str(n): rows for n, rows in raw["rounds"].items()}
    memory = {str(n): values for n, values in raw["rss_mib"].items()}
    summary: dict[str, Any] = {}
    for n, rows in rounds.items():
        summary[n] = {
            "throughput_rps_median": round(statistics.median(r["throughput_rps"] for r in rows), 1),
            "throughput_rps_rounds": [round(r["throughput_rps"], 1) for r in rows],
            "p50_ms_median": round(statistics.median(r["p50_ms"] for r in rows), 2),
            "p99_ms_median": round(statistics.median(r["p99_ms"] for r in rows), 2),
            "errors": sum(r["errors"] for r in rows),
            "rss_mib_per_worker": list(memory[n].values()),
        }
    ratios = [two["throughput_rps"] / one["throughput_rps"] for one, two in zip(rounds["1"], rounds["2"], strict=True)]
    summary["ratio_2_to_1"] = {"median": round(statistics.median(ratios), 2), "rounds": [round(r, 2) for r in ratios]}
    return summary


def table(summary: dict[str, Any], supervisor_mib: float) -> str:
    rows = []
    for n, row in summary.items():
        if not n.isdigit():
            continue
        memory = ", ".join(f"{value:.0f}" for value in row["rss_mib_per_worker"])
        if n != "1":
            memory += f" (+ supervisor {supervisor_mib:.0f})"
        rounds = ", ".join(f"{value:.0f}" for value in row["throughput_rps_rounds"])
        rows.append([n, f"{row['throughput_rps_median']:.0f}", rounds, f"{row['p50_ms_median']:.2f}", memory])
    header = ["workers", "req/s (median)", "req/s per round", "p50 ms", "RSS per worker, MiB"]
    ratio = summary["ratio_2_to_1"]
    rounds = ", ".join(f"{value:.2f}" for value in ratio["rounds"])
    return markdown_table(header, rows) + f"\n\n2 workers / 1 worker, per round: {rounds}; median {ratio['median']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="zoo repository (default: build one in a temp dir)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=1.0, help="seconds per measurement window")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        repository = arguments.repository or build_zoo(Path(work) / "zoo")
        log(f"load average before: {load_average()}")
        raw = run(repository, arguments.rounds, arguments.window)
    summary = summarise(raw)
    machine = machine_description(model=MODEL, concurrency=CONCURRENCY, encoding="json", equivalence_policy="off")
    path = save_results("workers", {"machine": machine, "summary": summary, **raw})
    print(table(summary, raw["supervisor_rss_mib"]))
    log(f"saved {path}")


if __name__ == "__main__":
    main()
