"""Where a small request's server CPU goes: `bnfold serve` under wrk at 32 connections, sampled by py-spy.

    .venv/bin/python -m bench.profile_request [--repository model_repository] [--kind json] [--seconds 20]
        [--setting log_level=warning ...] [--svg profile.svg]

1. Starts `bnfold serve` on the repository (settings as shipped unless --setting overrides one) and measures the
   server CPU per request without the profiler (bench.wrk_load: /proc utime+stime over a wrk run).
2. Runs wrk again while `py-spy record --native --format raw` samples the server (on-CPU stacks of every
   thread; idle threads excluded), and sorts every sample into one stage of the request path by the innermost
   frame that matches a stage's pattern (STAGES, first match from the leaf up).
3. Prints each stage's share of the samples and, as µs per request, that share of the unprofiled server CPU.

Samples, not instrumentation: the sampler's own pauses inflate all stages alike, so shares stay comparable.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench.common import markdown_table
from bench.processes import BIN, bnfold_serve
from bench.serving_inputs import model_requests
from bench.wrk_load import HttpBody, run_wrk

# (stage, frame pattern): the innermost matching frame of a stack decides its stage. Order breaks ties within
# one frame only, so the patterns are specific (module paths and function names as py-spy prints them).
STAGES: tuple[tuple[str, str], ...] = (
    ("onnxruntime session.run", r"onnxruntime|OrtRun|InferenceSession|run_sync \(bnfold/service/runtime"),
    ("JSON parse of the body (orjson / json)", r"parse_json|split_body|orjson|json/decoder|json/__init__"),
    ("input decoding + validation (numpy)", r"decode_inputs|v2_request\.py"),
    ("response encoding", r"v2_response\.py|\bencode \(bnfold"),
    ("Prometheus metrics (labels + observe)", r"prometheus_client|observe_request|observe_run|observe_batch|observe "),
    ("access log + logging", r"logging/__init__|httptools_impl.py\).*log|access|logging"),
    ("batcher: queue, futures, thread hop", r"batching\.py|anyio|threading\.py|concurrent/futures|futex|_thread"),
    ("data plane + handler glue", r"dataplane\.py|handlers\.py|model\.py \(|fast_infer\.py"),
    ("ASGI layers (Starlette / FastAPI middleware)", r"starlette|fastapi|uvicorn/middleware"),
    ("HTTP protocol (uvicorn + httptools)", r"uvicorn/protocols|httptools|h11"),
    ("event loop + sockets (uvloop / asyncio)", r"uvloop|asyncio|epoll|sendmsg|send \(|recv|writev|__libc_write"),
)


def stage_of(stack: str) -> str:
    """The stage of one collapsed stack ("outer;...;inner"): innermost frame matching a stage pattern."""
    for frame in reversed(stack.split(";")):
        for stage, pattern in STAGES:
            if re.search(pattern, frame):
                return stage
    return "other (interpreter, GC, unattributed native)"


def read_raw(path: Path) -> Counter[str]:
    """py-spy's raw format: one collapsed stack and its sample count per line."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stage_of(stack)] += int(count)
    return counts


def profile(pid: int, seconds: float, raw: Path, svg: Path | None) -> None:
    """py-spy record on `pid` for `seconds` (raw collapsed stacks; also a flame graph when `svg`)."""
    spy = [str(BIN / "py-spy"), "record", "--native", "--pid", str(pid), "--duration", f"{int(seconds)}"]
    spy += ["--rate", "200"]
    subprocess.run([*spy, "--format", "raw", "--output", str(raw)], check=True, capture_output=True)
    if svg is not None:
        subprocess.run([*spy, "--output", str(svg)], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True, help="repository of `bnfold build-default`")
    parser.add_argument("--model", default="digits_resnet")
    parser.add_argument("--kind", choices=("json", "binary"), default="json")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--setting", action="append", default=[], help="NAME=VALUE for bnfold serve (repeatable)")
    parser.add_argument("--svg", type=Path, help="also write a py-spy flame graph here")
    arguments = parser.parse_args()
    settings = dict(item.split("=", 1) for item in arguments.setting)
    settings.setdefault("log_level", "info")  # as shipped; bench.processes defaults to warning
    post = HttpBody.from_request(getattr(model_requests(arguments.repository, arguments.model), arguments.kind))
    with bnfold_serve(arguments.repository, **settings) as server, tempfile.TemporaryDirectory() as temporary:
        run_wrk(server.port, post, arguments.concurrency, 2.0, server.pid)  # warm-up
        plain = run_wrk(server.port, post, arguments.concurrency, 10.0, server.pid)
        raw = Path(temporary) / "profile.txt"
        sampler = threading.Thread(target=profile, args=(server.pid, arguments.seconds, raw, arguments.svg))
        sampler.start()
        profiled = run_wrk(
            server.port, post, arguments.concurrency, arguments.seconds * (2 if arguments.svg else 1) + 2, server.pid
        )
        sampler.join()
        counts = read_raw(raw)
    total = sum(counts.values())
    cpu = plain.server_cpu_us or 0.0
    print(
        f"\n{arguments.model} {arguments.kind}, {arguments.concurrency} connections, settings {settings}: "
        f"{plain.throughput_rps:.0f} req/s, server CPU {cpu:.0f} µs/request unprofiled "
        f"({profiled.throughput_rps:.0f} req/s while sampled); {total} samples\n",
        file=sys.stdout,
    )
    rows = [
        [stage, f"{100 * count / total:.1f}%", f"{cpu * count / total:.0f}"] for stage, count in counts.most_common()
    ]
    print(markdown_table(["stage", "share of samples", "≈ µs per request"], rows))


if __name__ == "__main__":
    main()
