"""A lean closed-loop HTTP/1.1 load generator measured over stable windows, the way perf_analyzer does.

`concurrency` connections (keep-alive) each send the same pre-encoded request, wait for the whole response,
and send again. Time is cut into windows of `window_s` seconds; after each window the throughput (responses
completed in it / window length) is computed, and the measurement stops when the last `stable_windows`
windows are within ±`stability` of their mean (perf_analyzer: 3 windows, 10%), or after `max_windows`
(reported as unstable). Throughput is the mean of those windows; p50/p90/p99 come from their latencies.

Why the generator is not the bottleneck: requests are bytes built once, responses are parsed only as far as
the status line and Content-Length (no HTTP library, no JSON decoding), and the CPU time of the generator and
of the server are both measured per request (client_cpu_us, server_cpu_us): the generator uses several
times less CPU per request than the server on every row, so on 2 cores the server gets most of the machine.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """Where and what to send: loopback port, the request bytes, and the server's pid (CPU accounting)."""

    port: int
    request: bytes
    server_pid: int | None = None


@dataclass
class Measurement:
    """Result of one closed-loop run at one concurrency."""

    concurrency: int
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    windows: list[float] = field(default_factory=list)
    stable: bool = True
    errors: int = 0
    client_cpu_us: float = 0.0
    server_cpu_us: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def http_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A keep-alive POST request as bytes."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status code and body of one response (Content-Length framing, as uvicorn sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            return status, await reader.readexactly(int(line[15:]))
    raise RuntimeError(f"response without Content-Length: {head[:200]!r}")


def server_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process from /proc/<pid>/stat, in seconds."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.running = True
        self.failure: str | None = None


Worker = Callable[[Target, "_Recorder"], Awaitable[None]]  # one connection's closed loop


async def _worker(target: Target, recorder: _Recorder) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        while recorder.running:
            start = time.perf_counter()
            writer.write(target.request)
            status, _ = await read_response(reader)
            recorder.latencies.append(time.perf_counter() - start)
            recorder.errors += status != 200
    except Exception as error:  # reported by _summarise: a dead connection must not pass unnoticed
        recorder.failure = recorder.failure or repr(error)
    finally:
        writer.close()


def _stable(windows: list[float], count: int, stability: float) -> bool:
    if len(windows) < count:
        return False
    last = windows[-count:]
    mean = statistics.fmean(last)
    return mean > 0 and all(abs(value - mean) <= stability * mean for value in last)


async def _measure(
    target: Target, concurrency: int, window_s: float, max_windows: int, warmup_s: float, worker: Worker
) -> Measurement:
    recorder = _Recorder()
    workers = [asyncio.create_task(worker(target, recorder)) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)
    windows: list[float] = []
    window_latencies: list[list[float]] = []
    cpu: list[tuple[float, float | None]] = []
    while len(windows) < max_windows and not _stable(windows, 3, 0.10):
        done_before, cpu_before = len(recorder.latencies), (time.process_time(), server_cpu_seconds(target.server_pid))
        start = time.perf_counter()
        await asyncio.sleep(window_s)
        elapsed = time.perf_counter() - start
        completed = recorder.latencies[done_before:]
        windows.append(len(completed) / elapsed)
        window_latencies.append(list(completed))
        cpu.append(cpu_before)
    cpu_end = (time.process_time(), server_cpu_seconds(target.server_pid))
    recorder.running = False
    await asyncio.wait(workers, timeout=30)
    for task in workers:
        task.cancel()
    return _summarise(concurrency, windows, window_latencies, cpu[-3] if len(cpu) >= 3 else cpu[0], cpu_end, recorder)


def _summarise(
    concurrency: int,
    windows: list[float],
    window_latencies: list[list[float]],
    cpu_start: tuple[float, float | None],
    cpu_end: tuple[float, float | None],
    recorder: _Recorder,
) -> Measurement:
    if recorder.failure:
        raise RuntimeError(f"a client connection failed at concurrency {concurrency}: {recorder.failure}")
    latencies = sorted(ms * 1000 for window in window_latencies[-3:] for ms in window)
    if not latencies:
        raise RuntimeError(f"no response completed at concurrency {concurrency}; is the server up?")
    count = len(latencies)

    def quantile(q: float) -> float:
        return latencies[min(count - 1, int(q * count))]

    server_cpu = None
    if cpu_start[1] is not None and cpu_end[1] is not None:
        server_cpu = (cpu_end[1] - cpu_start[1]) / count * 1e6
    return Measurement(
        concurrency=concurrency,
        throughput_rps=statistics.fmean(windows[-3:]),
        p50_ms=quantile(0.50),
        p90_ms=quantile(0.90),
        p99_ms=quantile(0.99),
        windows=[round(value, 1) for value in windows],
        stable=_stable(windows, 3, 0.10),
        errors=recorder.errors,
        client_cpu_us=(cpu_end[0] - cpu_start[0]) / count * 1e6,
        server_cpu_us=server_cpu,
    )


def measure(
    target: Target,
    concurrency: int,
    window_s: float = 1.0,
    max_windows: int = 8,
    warmup_s: float = 0.5,
    worker: Worker = _worker,
) -> Measurement:
    """Closed loop at `concurrency` until 3 consecutive windows agree within 10% (or `max_windows`); `worker`
    is one connection's loop (HTTP/1.1 here; bench.grpc_load's for gRPC)."""
    return asyncio.run(_measure(target, concurrency, window_s, max_windows, warmup_s, worker))


def send_once(port: int, request: bytes) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body). For checking answers before measuring."""

    async def once() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        try:
            return await read_response(reader)
        finally:
            writer.close()

    return asyncio.run(once())
