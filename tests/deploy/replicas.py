"""`bnfold serve` processes started through scripts/serve.sh, the runtime image's command, on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.deploy.container_build import REPO_ROOT, StageEnvironment

SERVE_SCRIPT = REPO_ROOT / "scripts" / "serve.sh"
API_KEY = "deploy-test-key"


def free_port(*hosts: str) -> int:
    """A TCP port free on every one of `hosts` (loopback addresses) at the time of asking."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
        if all(_bindable(host, port) for host in hosts[1:]):
            return port
    raise RuntimeError(f"no TCP port free on all of {hosts}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def http(method: str, url: str, body: Any = None, token: str | None = API_KEY) -> tuple[int, dict[str, str], bytes]:
    """One request; returns (status, headers, body) for every status instead of raising on 4xx/5xx."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class Replica:
    """One `scripts/serve.sh` process serving `repository` on host:port; log in `log_path`."""

    def __init__(self, runtime: StageEnvironment, repository: Path, host: str, port: int, log_path: Path) -> None:
        self.host, self.port, self.log_path = host, port, log_path
        env = runtime.env(
            BNFOLD_REPOSITORY=str(repository),
            BNFOLD_HOST=host,
            BNFOLD_PORT=str(port),
            BNFOLD_API_KEY=API_KEY,
            BNFOLD_INTRA_OP_THREADS="1",
        )
        self.env = env
        with log_path.open("wb") as log:
            self.process = subprocess.Popen([str(SERVE_SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve.sh exited {self.process.returncode}: {self.log_path.read_text()}")
            try:
                if http("GET", f"{self.url}/v2/health/ready", token=None)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.url} not ready after {timeout} s: {self.log_path.read_text()[-2000:]}")

    def served_requests(self, model: str) -> float:
        """Successful inference requests this replica itself counted (its Prometheus /metrics)."""
        text = http("GET", f"{self.url}/metrics", token=None)[2].decode()
        wanted = ("bnfold_requests_total{", f'model="{model}"', 'status="200"')
        lines = [line for line in text.splitlines() if line.startswith(wanted[0]) and all(w in line for w in wanted)]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
