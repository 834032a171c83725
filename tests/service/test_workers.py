"""`bnfold serve --workers 2` as real processes: two worker pids answer on one port, /metrics sums exactly the
requests sent to both, cores are divided between the workers, and SIGTERM stops every process (and removes the
metrics directory) within a bound."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from bnfold.service.settings import Settings
from tests.load.serve_process import free_port
from tests.service.builders import write_entry
from tests.service.oracle import json_request, run_directly

ROOT = Path(__file__).resolve().parents[2]
BNFOLD = Path(sys.executable).parent / "bnfold"
STOP_BOUND_SECONDS = 20.0


@dataclass
class Workers:
    url: str
    parent: subprocess.Popen[bytes]
    pids: set[int]
    grpc_port: int


def answering_pid(url: str, path: str = "/v2/health/ready") -> tuple[int, int]:
    """(status, worker pid) of one GET on a fresh connection (a new connection may reach any worker)."""
    response = httpx.get(url + path, headers={"Connection": "close"}, timeout=30)
    return response.status_code, int(response.headers["x-bnfold-worker"])


def wait_for_ready_workers(url: str, parent: subprocess.Popen[bytes], count: int, timeout: float = 180) -> set[int]:
    """Poll readiness on fresh connections until `count` distinct workers have answered 200."""
    ready: set[int] = set()
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(8) as pool:
        while len(ready) < count:
            if parent.poll() is not None:
                error = parent.stderr.read().decode()[-2000:] if parent.stderr else ""
                raise AssertionError(f"bnfold serve exited with {parent.returncode}: {error}")
            assert time.monotonic() < deadline, f"only workers {ready} were ready after {timeout} s"
            try:
                answers = list(pool.map(lambda _: answering_pid(url), range(16)))
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            ready |= {pid for status, pid in answers if status == 200}
    return ready


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("workers")
    write_entry(root, "digits", rng)
    return root


@pytest.fixture(scope="module")
def workers(repository: Path) -> Iterator[Workers]:
    """One `bnfold serve --workers 2` for the module; the last test stops it with SIGTERM."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env = {**clean, "BNFOLD_REPOSITORY": str(repository), "BNFOLD_EQUIVALENCE_POLICY": "off"}
    grpc_port = free_port()
    command = [str(BNFOLD), "serve", "--port", str(port), "--grpc-port", str(grpc_port), "--workers", "2"]
    command += ["--log-level", "warning"]
    parent = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        yield Workers(url, parent, wait_for_ready_workers(url, parent, 2), grpc_port)
    finally:
        if parent.poll() is None:
            parent.send_signal(signal.SIGTERM)
        parent.communicate(timeout=60)


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text `text` (labels in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match[1])) == labels:
            return float(match[2])
    raise AssertionError(f"no sample {name}{labels} in /metrics")


def infer(url: str, x: np.ndarray) -> tuple[int, int, list[float]]:
    response = httpx.post(
        f"{url}/v2/models/digits/infer", json=json_request(x), headers={"Connection": "close"}, timeout=30
    )
    return response.status_code, int(response.headers["x-bnfold-worker"]), response.json()["outputs"][0]["data"]


def test_two_worker_processes_serve_one_port(workers: Workers) -> None:
    assert len(workers.pids) == 2
    assert workers.parent.pid not in workers.pids
    assert {parent_pid(pid) for pid in workers.pids} == {workers.parent.pid}


def test_metrics_count_exactly_the_requests_sent_to_all_workers(
    workers: Workers, repository: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    expected = run_directly(repository / "digits", "unfolded", x)
    sent = 60
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: infer(workers.url, x), range(sent)))
    assert {status for status, _, _ in answers} == {200}
    assert {pid for _, pid, _ in answers} == workers.pids  # both workers answered some
    for _, _, data in answers:  # every worker computes the model's output
        np.testing.assert_allclose(np.asarray(data, np.float32).reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)
    for _ in range(4):  # whichever worker answers /metrics reports the sum over both
        text = httpx.get(f"{workers.url}/metrics", headers={"Connection": "close"}).text
        assert metric(text, "bnfold_requests_total", model="digits", variant="folded", status="200") == sent
        assert metric(text, "bnfold_request_latency_seconds_count", model="digits", variant="folded") == sent
        assert metric(text, "bnfold_model_ready", model="digits") == 1.0
        assert metric(text, "bnfold_folded_degraded", model="digits") == 0.0


def test_every_worker_binds_the_grpc_port_too(workers: Workers, repository: Path, rng: np.random.Generator) -> None:
    """Both workers bound the gRPC port (a worker that could not would have stopped the server) and gRPC
    answers with the model's output on fresh channels, beside HTTP."""
    import tritonclient.grpc as triton

    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    expected = run_directly(repository / "digits", "unfolded", x)
    for _ in range(6):
        with triton.InferenceServerClient(f"127.0.0.1:{workers.grpc_port}") as client:
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            logits = client.infer("digits", [tensor]).as_numpy("logits")
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    assert workers.parent.poll() is None
    listening = [pid for pid in workers.pids if f":{workers.grpc_port:04X} " in _tcp_listeners(pid)]
    assert sorted(listening) == sorted(workers.pids)


def _tcp_listeners(pid: int) -> str:
    """Local addresses of the listening TCP sockets that process `pid` holds (from /proc/<pid>/net/tcp and tcp6 —
    grpc listens on IPv4-mapped IPv6 — filtered by the socket inodes among its file descriptors)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    rows = [row for table in ("tcp", "tcp6") for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]]
    return " ".join(f"{row.split()[1]} " for row in rows if row.split()[3] == "0A" and row.split()[9] in inodes)


def test_sigterm_stops_every_worker_and_removes_the_metrics_directory(workers: Workers) -> None:
    environ = Path(f"/proc/{next(iter(workers.pids))}/environ").read_bytes().split(b"\0")
    directory = Path(next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode())
    assert sorted(p.name.rsplit("_", 1)[0] for p in directory.iterdir()) != []  # workers write their values here
    started = time.monotonic()
    workers.parent.send_signal(signal.SIGTERM)
    assert workers.parent.wait(timeout=STOP_BOUND_SECONDS) == 0
    assert time.monotonic() - started < STOP_BOUND_SECONDS
    assert [pid for pid in workers.pids if Path(f"/proc/{pid}").exists()] == []
    assert not directory.exists()


@pytest.mark.parametrize(
    ("cores", "workers", "sessions", "threads", "runs"),
    [(8, 1, 2, 4, 2), (8, 2, 2, 2, 2), (8, 4, 4, 1, 2), (2, 4, 2, 1, 1)],
)
def test_cores_are_divided_between_workers(
    repository: Path, monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, sessions: int, threads: int, runs: int
) -> None:
    """intra-op threads = max(1, cores // workers // sessions); runs at once = max(1, cores // workers // threads)."""
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    settings = Settings(repository=repository, workers=workers)
    assert (settings.threads_per_session(sessions), settings.concurrent_runs(sessions)) == (threads, runs)


def test_bad_worker_count_is_a_one_line_error() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")}
    result = subprocess.run(
        [str(BNFOLD), "serve", "--repository", ".", "--workers", "0"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "bnfold serve: --workers (or BNFOLD_WORKERS): Input should be greater than or equal to 1",
    )


def test_a_starting_worker_forgets_the_live_gauges_of_dead_workers(tmp_path: Path) -> None:
    from bnfold.service.workers import forget_dead_workers

    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = os.getpid()
    names = [f"gauge_livemin_{dead.pid}.db", f"gauge_livemax_{dead.pid}.db", f"counter_{dead.pid}.db"]
    names += [f"gauge_livemin_{alive}.db", f"gauge_max_{dead.pid}.db"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_workers(tmp_path) == [dead.pid]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead.pid}.db", f"gauge_livemin_{alive}.db", f"gauge_max_{dead.pid}.db"]
    )
