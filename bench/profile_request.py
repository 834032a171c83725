"""Where a small request's server CPU goes: `bnfold serve` under load at 32 connections, sampled by py-spy.

    .venv/bin/python -m bench.profile_request [--repository model_repository] [--kind json|binary|grpc] [--seconds 20]
        [--setting log_level=warning ...] [--svg profile.svg]

1. Starts `bnfold serve` on the repository (settings as shipped unless --setting overrides one) and measures the
   server CPU per request without the profiler (/proc utime+stime over a run of wrk, or of h2load for --kind grpc:
   ModelInfer with raw_input_contents, bench.h2load_grpc).
2. Runs the load again while `py-spy record --native --format raw` samples the server (on-CPU stacks of every
   thread; idle threads excluded), and sorts every sample into one stage of the request path by the innermost
   frame that matches a stage's pattern (STAGES, first match from the leaf up).
3. Prints each stage's share of the on-CPU samples and, as µs per request, that share of the unprofiled server CPU.

Samples, not instrumentation: the sampler's own pauses inflate all stages alike, so shares stay comparable.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.common import markdown_table
from bench.grpc_load import infer_once
from bench.h2load_grpc import run_h2load_grpc
from bench.processes import BIN, Server, bnfold_serve
from bench.serving_inputs import model_requests
from bench.wrk_load import HttpBody, WrkRun, run_wrk

# (stage, frame pattern): a stack belongs to the stage of its innermost frame that matches a pattern (frames are
# tried leaf first; within one frame, in this order), except for SUBTREES. Patterns name modules and functions as
# py-spy prints them.
STAGES: tuple[tuple[str, str], ...] = (
    ("onnxruntime session.run", r"onnxruntime|OrtRun|InferenceSession|^run_sync \(bnfold/service/runtime"),
    ("garbage collection (gc_collect_main)", r"^gc_collect|^_PyGC_|^gc_collect_main"),
    ("socket write/read syscalls (loopback TCP)", r"^(write|writev|read|recv|sendmsg|send) \(|^UVStream__try_write"),
    ("response encoding (orjson, headers)", r"v2_response\.py|^_headers \(bnfold|^_json_error"),
    ("JSON parse of the body", r"^parse_json|^split_body|^loads \(|json/decoder|scan_once"),
    ("input decoding + validation (numpy)", r"v2_request\.py|^decode_inputs"),
    ("Prometheus metrics (labels + observe)", r"prometheus_client|^ServiceMetrics\.|observe_run|observe_batch"),
    ("access log + logging", r"logging/__init__|\(logging/|access_log|AccessFormatter"),
    ("request id (uuid4)", r"^uuid4|uuid\.py|os_urandom|getrandom"),
    ("batcher: queue, futures, thread hop", r"batching\.py|anyio/|to_thread|threading\.py|concurrent/futures"),
    ("gRPC messages (protobuf parse and build)", r"grpc_v2/tensors\.py|google/protobuf|_upb|upb_"),
    ("gRPC call handling (bnfold framing, servicer)", r"grpc_v2/http2\.py|grpc_v2/servicer\.py|grpc_v2/streaming"),
    ("data plane + handler glue", r"dataplane\.py|handlers\.py|service/model\.py|fast_infer\.py|service/edge\.py"),
    ("ASGI layers (Starlette / FastAPI / uvicorn middleware)", r"starlette/|fastapi/|uvicorn/middleware"),
    (
        "HTTP protocol (uvicorn + httptools / zttp)",
        r"uvicorn/protocols|httptools|HttpParser|HttpToolsProtocol|h11|zttp|grpc_v2/http2_server",
    ),
    ("event loop (uvloop / asyncio)", r"uvloop|loop\.c|asyncio|_asynciomodule|uv_|uv__"),
)
# Stages whose frames claim the whole stack below them (a log line's write(2) is the access log's, not the socket's).
SUBTREES = {"onnxruntime session.run", "garbage collection (gc_collect_main)", "access log + logging"}
# Leaf frames of a thread that is waiting, not running: an idle worker thread blocked on its queue's lock, the
# event loop in epoll. py-spy --native reports them; they are no CPU, so they are left out (and counted).
IDLE = re.compile(r"PyThread_acquire_lock_timed|epoll_pwait|epoll_wait|pthread_cond_(timed)?wait|sem_(timed)?wait")
IDLE_STAGE = "(idle: waiting on a lock or in epoll; left out)"


def stage_of(stack: str) -> str:
    """The stage of one collapsed stack ("outer;...;inner"), or IDLE_STAGE for a waiting thread."""
    frames = stack.split(";")
    if any(IDLE.search(frame) for frame in frames[-4:]):
        return IDLE_STAGE
    for stage, pattern in STAGES:  # work that never calls back into the request path: its whole subtree counts
        if stage in SUBTREES and any(re.search(pattern, frame) for frame in frames):
            return stage
    for frame in reversed(frames):
        for stage, pattern in STAGES:
            if re.search(pattern, frame):
                return stage
    return "other (interpreter, unattributed native)"


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


def load_of(arguments: argparse.Namespace, server: Server) -> Callable[[float], WrkRun]:
    """A run of the load `arguments.kind` names for some seconds: wrk over HTTP, or h2load over gRPC."""
    requests = model_requests(arguments.repository, arguments.model)
    if arguments.kind == "grpc":
        if server.grpc_port is None:
            raise SystemExit("--kind grpc needs the gRPC port; do not set grpc_port=0")
        port = server.grpc_port
        answer_length = len(infer_once(port, requests.grpc).SerializeToString())
        return lambda seconds: run_h2load_grpc(
            port, requests.grpc, answer_length, arguments.concurrency, seconds, server.pid
        )
    post = HttpBody.from_request(getattr(requests, arguments.kind))
    return lambda seconds: run_wrk(server.port, post, arguments.concurrency, seconds, server.pid)


def sample_server(arguments: argparse.Namespace, settings: dict[str, str], raw: Path) -> tuple[float, str]:
    """Unprofiled server CPU per request, then py-spy's stacks into `raw` under the same load; and a summary."""
    with bnfold_serve(arguments.repository, **settings) as server:
        load = load_of(arguments, server)
        load(2.0)  # warm-up
        plain = load(10.0)
        sampler = threading.Thread(target=profile, args=(server.pid, arguments.seconds, raw, arguments.svg))
        sampler.start()
        profiled = load(arguments.seconds * (2 if arguments.svg else 1) + 2)
        sampler.join()
    cpu = plain.server_cpu_us or 0.0
    summary = (
        f"{arguments.model} {arguments.kind}, {arguments.concurrency} connections, settings {settings}: "
        f"{plain.throughput_rps:.0f} req/s, server CPU {cpu:.0f} µs/request unprofiled "
        f"({profiled.throughput_rps:.0f} req/s while sampled)"
    )
    return cpu, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="repository of `bnfold build-default`")
    parser.add_argument("--model", default="digits_resnet")
    parser.add_argument("--kind", choices=("json", "binary", "grpc"), default="json")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--setting", action="append", default=[], help="NAME=VALUE for bnfold serve (repeatable)")
    parser.add_argument("--svg", type=Path, help="also write a py-spy flame graph here")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument("--from-raw", type=Path, help="attribute the stacks of an earlier --raw file (no server)")
    parser.add_argument("--cpu-us", type=float, help="with --from-raw: the server CPU per request to share out")
    arguments = parser.parse_args()
    settings = dict(item.split("=", 1) for item in arguments.setting)
    settings.setdefault("log_level", "info")  # as shipped; bench.processes defaults to warning
    with tempfile.TemporaryDirectory() as temporary:
        if arguments.from_raw is not None:
            raw, cpu, summary = arguments.from_raw, arguments.cpu_us or 0.0, f"stacks of {arguments.from_raw}"
        else:
            if arguments.repository is None:
                parser.error("--repository is required unless --from-raw is given")
            raw = arguments.raw or Path(temporary) / "profile.txt"
            cpu, summary = sample_server(arguments, settings, raw)
        counts = read_raw(raw)
    idle = counts.pop(IDLE_STAGE, 0)
    total = sum(counts.values())
    print(f"\n{summary}; {total} on-CPU samples ({idle} idle-thread samples left out)\n")
    rows = [
        [stage, f"{100 * count / total:.1f}%", f"{cpu * count / total:.0f}"] for stage, count in counts.most_common()
    ]
    print(markdown_table(["stage", "share of samples", "≈ µs per request"], rows))


if __name__ == "__main__":
    main()
