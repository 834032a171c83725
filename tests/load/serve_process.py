"""`bnfold serve` as a real subprocess on a free loopback port: its URL, pid and resident memory."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BNFOLD = Path(sys.executable).parent / "bnfold"


@dataclass
class ServeProcess:
    url: str
    process: subprocess.Popen[bytes]

    def rss_bytes(self) -> int:
        """Resident set size of the server process (VmRSS of /proc/<pid>/status)."""
        return self._status_bytes("VmRSS")

    def peak_rss_bytes(self) -> int:
        """The largest resident set size the server process has had (VmHWM of /proc/<pid>/status)."""
        return self._status_bytes("VmHWM")

    def _status_bytes(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} for pid {self.process.pid}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_process(
    repository: Path,
    timeout: float = 60.0,
    log_file: Path | None = None,
    open_files: int | None = None,
    log_level: str = "warning",
    stdout_file: Path | None = None,
    **settings: str,
) -> Iterator[ServeProcess]:
    """Start `bnfold serve` (settings as BNFOLD_<NAME> variables), wait until ready, terminate at the end.
    `log_file`: its stderr goes there (else to a pipe); `stdout_file`: its standard output (else discarded);
    `open_files`: its file-descriptor limit (RLIMIT_NOFILE)."""
    port = free_port()
    settings = {"grpc_port": "0", **settings}  # HTTP only unless asked: no two processes contend for 8001
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")}
    env = {**clean, "BNFOLD_REPOSITORY": str(repository), **{f"BNFOLD_{k.upper()}": v for k, v in settings.items()}}
    command = [str(BNFOLD), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", log_level]
    limit = None if open_files is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files,) * 2))
    stderr = subprocess.PIPE if log_file is None else log_file.open("wb")
    stdout = subprocess.DEVNULL if stdout_file is None else stdout_file.open("wb")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, preexec_fn=limit)
    for handle in (stderr, stdout):
        if handle not in (subprocess.PIPE, subprocess.DEVNULL):
            handle.close()  # type: ignore[union-attr]  # the child holds its own descriptor
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, timeout)
        yield ServeProcess(url, process)
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=30)


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bnfold serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"bnfold serve was not ready within {timeout} s")
