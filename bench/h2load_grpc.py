"""h2load (Debian package `nghttp2-client`) as the gRPC load generator of the peer comparison: a C client, so
that on a 2-core machine the server is not measured against a Python client's CPU.

`concurrency` HTTP/2 connections (one stream each, as one channel per request in flight), each POSTing the same
gRPC frame (a 0 flag byte, the 4-byte big-endian length, a serialised ModelInferRequest) to ModelInfer for a
fixed time (closed loop). h2load knows HTTP/2, not gRPC: a failed RPC still ends with HTTP status 200, its error
in the `grpc-status` trailer and no message. So every run is checked by the bytes received: the response DATA
must be exactly (5 + the length of the expected response message) per request, which an error response (no
message) or a different answer (another length) cannot give — plus, at most, whole such messages of calls
still in flight when the run ended (their message arrived, their trailers did not: not counted as done).
A stream (ModelStreamInfer, `stream_messages` set) is the same with that many request frames in one body, sent at once
(that many requests in flight on the stream; h2load closes it and opens the next when all are answered), and as
many answers per stream; latency is then the whole stream's.
h2load never reconnects, and bnfold's HTTP/2 transport ends every connection (GOAWAY) after 4000 streams, so a
run is a series of h2load runs of at most CALLS_PER_CONNECTION calls (or streams) per connection each, until
`seconds` have passed; throughput is the requests over the sum of those runs' own durations (the same for every
server measured).
Latency percentiles come from h2load's per-request log; server CPU per request is the /proc utime+stime delta
of the server's process tree over the run.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.http_load import server_cpu_seconds
from bench.wrk_load import WrkRun

CALLS_PER_CONNECTION = 3500  # below the 4000 streams after which bnfold's HTTP/2 transport ends a connection
FIRST_CALLS_PER_CONNECTION = 100
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
STREAM_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
SECOND_FRACTIONS = {"us": 1e6, "ms": 1e3, "s": 1.0}  # h2load's "finished in" units


def h2load_binary() -> str:
    found = shutil.which("h2load")
    if found is None:
        raise SystemExit("h2load is not installed; install it with: apt-get install -y nghttp2-client")
    return found


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def run_h2load_grpc(
    port: int,
    request: bytes,
    response_length: int,
    concurrency: int,
    seconds: float,
    server_pid: int | None,
    stream_messages: int | None = None,
) -> WrkRun:
    """h2load for `seconds` at `concurrency` connections, each call ModelInfer or (`stream_messages` set) a
    ModelStreamInfer stream of that many requests; RuntimeError unless every request succeeded with a response
    message of `response_length` bytes. Throughput is requests (stream messages) per second."""
    messages = stream_messages or 1
    path = INFER_PATH if stream_messages is None else STREAM_PATH
    cpu_before = server_cpu_seconds(server_pid)
    runs: list[_Run] = []
    with tempfile.TemporaryDirectory(prefix="bnfold-h2load-") as temporary:
        work = Path(temporary)
        (work / "frame").write_bytes(grpc_frame(request) * messages)
        command = [h2load_binary(), "-t1", f"-c{concurrency}", "-m1"]
        command += ["-d", str(work / "frame"), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        command += [f"--log-file={work / 'requests.log'}", f"http://127.0.0.1:{port}{path}"]
        calls = FIRST_CALLS_PER_CONNECTION * concurrency  # then as many as the remaining time holds, at the rate seen
        while (elapsed := sum(run.seconds for run in runs)) < seconds:
            if runs:
                rate = sum(run.succeeded for run in runs) / elapsed
                calls = min(CALLS_PER_CONNECTION * concurrency, max(concurrency, int(rate * (seconds - elapsed))))
            runs.append(_h2load([*command, f"-n{calls}"], work, seconds))
    cpu_after = server_cpu_seconds(server_pid)
    total, started, succeeded = (sum(getattr(run, key) for run in runs) for key in ("total", "started", "succeeded"))
    received = sum(run.data_bytes for run in runs)
    expected = succeeded * messages * (5 + response_length)
    unfinished, partial = divmod(received - expected, 5 + response_length)
    if not succeeded or total != succeeded or partial or not 0 <= unfinished <= (started - succeeded) * messages:
        raise RuntimeError(
            f"h2load at {concurrency} connections: {total} total, {started} started, {succeeded} succeeded, "
            f"{received} response bytes where every request answered would give {expected}"
        )
    rows = [row for run in runs for row in run.rows]
    finished_seconds = sum(run.seconds for run in runs)
    latencies_ms = sorted(int(row[2]) / 1000 for row in rows if row[1] == "200")
    quantiles = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    server_cpu = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = (cpu_after - cpu_before) / (succeeded * messages) * 1e6
    return WrkRun(
        concurrency=concurrency * messages,
        throughput_rps=succeeded * messages / finished_seconds,
        p50_ms=quantiles[49],
        p90_ms=quantiles[89],
        p99_ms=quantiles[98],
        requests=succeeded * messages,
        server_cpu_us=server_cpu,
    )


@dataclass
class _Run:
    """One h2load invocation's counts, response DATA bytes, duration and per-request log rows."""

    total: int
    started: int
    succeeded: int
    data_bytes: int
    seconds: float
    rows: list[list[str]]


def _h2load(command: list[str], work: Path, seconds: float) -> _Run:
    log = work / "requests.log"
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    summary = re.search(r"requests: (\d+) total, (\d+) started, \d+ done, (\d+) succeeded", result.stdout)
    finished = re.search(r"finished in ([\d.]+)(us|ms|s),", result.stdout)
    data = re.search(r"\((\d+)\) data", result.stdout)
    if result.returncode != 0 or summary is None or finished is None or data is None:
        raise RuntimeError(f"h2load failed ({result.returncode}): {result.stderr[-500:]} {result.stdout[-500:]}")
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    log.unlink()
    counts = (int(summary[1]), int(summary[2]), int(summary[3]))
    duration = float(finished[1]) / SECOND_FRACTIONS[finished[2]]
    return _Run(*counts, int(data[1]), duration, rows)
