"""Server processes for the serving benchmarks: `bnfold serve` and the bare ASGI floor, on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Server:
    port: int
    pid: int
    grpc_port: int | None = None  # bnfold serve only

    def rss_bytes(self) -> int:
        """Resident set size (VmRSS of /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_status(port: int, path: str) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return int(sock.recv(64)[9:12])
    except OSError:
        return None


@contextmanager
def running(command: list[str], port: int, ready_path: str, env: dict[str, str], timeout: float) -> Iterator[Server]:
    """Start `command`, wait until GET ready_path answers (200, or any status for the bare server), stop it.

    The server's output goes to a temporary file, not a pipe: a server that logs every request (an access log)
    would otherwise block once the pipe is full."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            while (status := _get_status(port, ready_path)) is None or (ready_path != "/" and status != 200):
                if process.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    error = output.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"server {command[:3]} did not become ready: {error}")
                time.sleep(0.05)
            yield Server(port, process.pid)
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM, then (a server whose graceful shutdown hangs, as MLServer's can) SIGKILL to its whole process
    group: the server was started in a session of its own, so the group is it and its workers."""
    process.terminate()
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


@contextmanager
def bnfold_serve(repository: Path, **settings: str) -> Iterator[Server]:
    """`bnfold serve` on the repository with BNFOLD_<NAME>=value settings; log level warning unless `log_level`
    is one of them (info, the default of `bnfold serve`, writes an access log line per request); gRPC on a free
    port of its own (several servers run at once)."""
    port = free_port()
    settings = {"grpc_port": str(free_port()), **settings}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")}
    settings = {"log_level": "warning", **settings}
    env = {**clean, "BNFOLD_REPOSITORY": str(repository), **{f"BNFOLD_{k.upper()}": v for k, v in settings.items()}}
    command = [str(BIN / "bnfold"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with running(command, port, "/v2/health/ready", env, timeout=300) as server:
        yield Server(server.port, server.pid, int(settings["grpc_port"]) or None)


@contextmanager
def bare_server() -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, "-m", "bench.bare_server", "--port", str(port)]
    with running(command, port, "/", dict(os.environ), timeout=60) as server:
        yield server


@contextmanager
def grpc_floor(response: bytes, server: Sequence[str] = (sys.executable, "-m", "bench.grpc_floor")) -> Iterator[Server]:
    """A gRPC floor answering `response` (a serialised ModelInferResponse) on a free port (Server.grpc_port; it
    serves no HTTP), ready once a gRPC channel to it connects. `server`: the command before `--port P --response
    FILE` (by default bench.grpc_floor, on grpcio)."""
    import grpc

    port = free_port()
    with tempfile.NamedTemporaryFile(suffix=".pb") as answer, tempfile.TemporaryFile() as output:
        answer.write(response)
        answer.flush()
        command = [*server, "--port", str(port), "--response", answer.name]
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=60)
                except grpc.FutureTimeoutError:
                    output.seek(0)
                    raise RuntimeError(f"gRPC floor did not start: {output.read().decode(errors='replace')}") from None
            yield Server(port, process.pid, port)
        finally:
            _stop(process)
