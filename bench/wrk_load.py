"""wrk (Debian package `wrk`) as the load generator of the peer comparison: one thread, `concurrency` keep-alive
connections, each POSTing the same body with the same headers for a fixed time (closed loop).

The body and headers are read by a Lua script from files named in environment variables; the script's `done`
hook prints one JSON line (requests, duration, errors, latency percentiles), which is all that is parsed.
Server CPU per request is the /proc utime+stime delta of the server's process tree over the run (warm-up
excluded), divided by the requests wrk completed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.http_load import server_cpu_seconds

LUA = r"""
local body = io.open(os.getenv("BNFOLD_WRK_BODY"), "rb")
wrk.method = "POST"
wrk.body = body:read("*a")
body:close()
for line in io.lines(os.getenv("BNFOLD_WRK_HEADERS")) do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BNFOLD_WRK {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class HttpBody:
    """One POST: path, headers and body bytes."""

    path: str
    headers: dict[str, str]
    body: bytes

    @classmethod
    def from_request(cls, request: bytes) -> HttpBody:
        """Split an HTTP/1.1 request as bench.http_load.http_request builds it (Host/Content-Length dropped)."""
        head, body = request.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        kept = {name: value for name, value in headers.items() if name.lower() not in ("host", "content-length")}
        return cls(lines[0].split(" ")[1], kept, body)

    def request(self) -> bytes:
        """The same POST as bytes, for bench.http_load.send_once."""
        from bench.http_load import http_request

        return http_request(self.path, self.body, self.headers)


@dataclass
class WrkRun:
    concurrency: int
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    server_cpu_us: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed; install it with: apt-get install -y wrk")
    return found


def run_wrk(port: int, post: HttpBody, concurrency: int, seconds: float, server_pid: int | None) -> WrkRun:
    """wrk for `seconds` (whole seconds, at least 1) at `concurrency` connections; RuntimeError on any non-2xx
    answer or socket error."""
    with tempfile.TemporaryDirectory(prefix="bnfold-wrk-") as temporary:
        work = Path(temporary)
        (work / "post.lua").write_text(LUA)
        (work / "body").write_bytes(post.body)
        (work / "headers").write_text("".join(f"{name}: {value}\n" for name, value in post.headers.items()))
        env = {**os.environ, "BNFOLD_WRK_BODY": str(work / "body"), "BNFOLD_WRK_HEADERS": str(work / "headers")}
        command = [wrk_binary(), "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
        command += ["-s", str(work / "post.lua"), f"http://127.0.0.1:{port}{post.path}"]
        cpu_before = server_cpu_seconds(server_pid)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
        cpu_after = server_cpu_seconds(server_pid)
    lines = [line for line in result.stdout.splitlines() if line.startswith("BNFOLD_WRK ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr[-500:]} {result.stdout[-500:]}")
    found = json.loads(lines[0].removeprefix("BNFOLD_WRK "))
    if found["status_errors"] or found["socket_errors"] or not found["requests"]:
        raise RuntimeError(f"wrk at {concurrency} connections on {post.path}: {found}")
    server_cpu = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = (cpu_after - cpu_before) / found["requests"] * 1e6
    return WrkRun(
        concurrency=concurrency,
        throughput_rps=found["requests"] / (found["duration_us"] / 1e6),
        p50_ms=found["p50_us"] / 1000,
        p90_ms=found["p90_us"] / 1000,
        p99_ms=found["p99_us"] / 1000,
        requests=found["requests"],
        server_cpu_us=server_cpu,
    )
