"""Serving benchmark 3 and the full soak: resident memory of `bnfold serve` with the whole zoo loaded, and
after 20,000 requests at 32 in flight across every model and variant (JSON and binary), with zero errors.

    .venv/bin/python -m bench.memory_soak [--repository model_repository] [--requests 20000] [--concurrency 32]

RSS (VmRSS) is read after loading, after a warm-up of 1,000 requests (onnxruntime's arenas, thread pools and
Python's allocator reach their working size), then every 2,000 requests. The target — growth < 10% — is
judged from loaded to the end and from warm-up to the end. Prints a markdown table; saves
bench/results/memory_soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
from pathlib import Path
from typing import Any

from bench.common import machine_description, markdown_table, save_results
from bench.http_load import read_response
from bench.processes import Server, bnfold_serve
from bench.serving import ZOO, build_zoo
from bench.serving_inputs import check_answers, model_requests

WARMUP = 1000
CHECKPOINT = 2000


def soak_requests(repository: Path, models: tuple[str, ...]) -> list[bytes]:
    """Per model: default JSON and binary, folded binary, unfolded JSON."""
    out = []
    for model in models:
        default = model_requests(repository, model)
        check = model_requests(repository, model, version="folded").binary
        out += [default.json, default.binary, check, model_requests(repository, model, version="unfolded").json]
    return out


async def _send(port: int, requests: list[bytes], count: int, concurrency: int) -> dict[int, int]:
    """`count` requests, cycling through `requests`, `concurrency` keep-alive connections; statuses counted."""
    statuses: dict[int, int] = {}
    order = itertools.islice(itertools.cycle(requests), count)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in order:
                writer.write(request)
                status, _ = await read_response(reader)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def soak(server: Server, requests: list[bytes], total: int, concurrency: int) -> dict[str, Any]:
    loaded = server.rss_bytes()
    statuses = asyncio.run(_send(server.port, requests, WARMUP, concurrency))
    warm = server.rss_bytes()
    checkpoints: list[dict[str, int]] = []
    sent = 0
    while sent < total:
        step = min(CHECKPOINT, total - sent)
        for status, count in asyncio.run(_send(server.port, requests, step, concurrency)).items():
            statuses[status] = statuses.get(status, 0) + count
        sent += step
        checkpoints.append({"requests": sent, "rss_bytes": server.rss_bytes()})
    final = checkpoints[-1]["rss_bytes"]
    return {
        "rss_loaded_bytes": loaded,
        "rss_warm_bytes": warm,
        "rss_final_bytes": final,
        "growth_from_loaded": final / loaded - 1,
        "growth_from_warm": final / warm - 1,
        "checkpoints": checkpoints,
        "statuses": statuses,
        "errors": sum(count for status, count in statuses.items() if status != 200),
        "requests": total + WARMUP,
        "concurrency": concurrency,
    }


def print_table(result: dict[str, Any]) -> None:
    mib = 2**20
    rows = [
        ["zoo loaded, no request yet", "0", f"{result['rss_loaded_bytes'] / mib:.1f}", "—"],
        ["after warm-up", str(WARMUP), f"{result['rss_warm_bytes'] / mib:.1f}", "—"],
    ]
    for point in result["checkpoints"]:
        growth = point["rss_bytes"] / result["rss_warm_bytes"] - 1
        rows.append(
            [
                f"after {point['requests']} more",
                str(point["requests"] + WARMUP),
                f"{point['rss_bytes'] / mib:.1f}",
                f"{growth:+.1%}",
            ]
        )
    print("\n### Memory of `bnfold serve` (whole zoo; growth vs after warm-up)\n")
    print(markdown_table(["when", "requests served", "RSS MiB", "growth"], rows))
    met = result["errors"] == 0 and result["growth_from_loaded"] < 0.10
    print(
        f"\nerrors: {result['errors']} (statuses {result['statuses']}); growth from loaded "
        f"{result['growth_from_loaded']:+.1%}, from warm-up {result['growth_from_warm']:+.1%}; "
        f"target (zero errors, growth < 10%): {'met' if met else 'NOT MET'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="zoo repository (default: build one in a temp dir)")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bnfold-soak-") as temporary:
        repository = arguments.repository or build_zoo(Path(temporary) / "zoo")
        models = tuple(model for model in ZOO if (repository / model).is_dir())
        requests = soak_requests(repository, models)
        with bnfold_serve(repository) as server:  # default settings: batching on, policy sample 1%
            for model in models:
                check_answers(server.port, model_requests(repository, model))
            result = soak(server, requests, arguments.requests, arguments.concurrency)
    result["machine"] = machine_description(models=list(models), settings="bnfold serve defaults")
    print_table(result)
    name = "memory_soak" if arguments.requests >= 20_000 else "memory_soak_quick"  # a smoke run keeps the real one
    print(f"\nsaved {save_results(name, result)}")


if __name__ == "__main__":
    main()
