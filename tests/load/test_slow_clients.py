"""Slow and stalled clients against a real `bnfold serve` process, over raw loopback sockets, with both HTTP
implementations uvicorn offers (h11 and httptools).

A request head trickled byte by byte, a body that stops arriving, an idle keep-alive connection: each is
closed within its bound (the head and body ones with a 408). Hundreds of such connections against a server
allowed 256 file descriptors leave /v2/health/live answering and the log small; SIGTERM with a stalled upload
open finishes within the graceful-shutdown bound."""

from __future__ import annotations

import contextlib
import json
import re
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.load.serve_process import ServeProcess, serve_process
from tests.service.builders import write_entry

PROTOCOLS = ["h11", "httptools"]
TICK = 0.5  # the server checks its connections twice a second
MARGIN = 1.5  # scheduling slack on a loaded 2-core machine
SLOW_HEAD = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 400
HEAD_TIMEOUT = "the request head did not arrive within 1.0 s; send the whole request without pausing"
STALLED = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("slow_clients_repository")
    write_entry(root, "digits", rng)
    return root


@pytest.fixture(scope="module", params=PROTOCOLS)
def short_bounds(
    repository: Path, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    bounds = {"header_timeout_s": "1", "body_timeout_s": "2", "keep_alive_timeout_s": "1"}
    log = tmp_path_factory.mktemp("short_bounds") / "serve.log"
    with serve_process(repository, log_file=log, http_protocol=request.param, **bounds) as server:
        server.log_file = log  # type: ignore[attr-defined]
        yield server


def _connect(server: ServeProcess, timeout: float = 5) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _closed_by_server(sock: socket.socket, deadline: float, trickle: bytes = b"", every: float = 0.2) -> bytes | None:
    """Send `trickle` one byte every `every` s until the server closes the connection; what it sent before
    closing, or None if it was still open at `deadline`."""
    received, position, next_send = b"", 0, time.monotonic()
    while time.monotonic() < deadline:
        if position < len(trickle) and time.monotonic() >= next_send:
            try:
                sock.send(trickle[position : position + 1])
            except OSError:
                return received
            position, next_send = position + 1, next_send + every
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return received
            if not chunk:
                return received
            received += chunk
    return None


def _timeout_answer(received: bytes) -> dict:
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), received
    assert b"connection: close" in head.lower(), received
    return json.loads(body)


def test_a_request_head_trickled_byte_by_byte_is_answered_408_and_closed(short_bounds: ServeProcess) -> None:
    """Bytes keep arriving (every 0.2 s), so no idle timeout would fire: the whole head has 1 s."""
    with _connect(short_bounds) as sock:
        start = time.monotonic()
        received = _closed_by_server(sock, start + 10, trickle=SLOW_HEAD)
        elapsed = time.monotonic() - start
    assert received is not None, "the slow head was still being read after 10 s"
    assert 1.0 <= elapsed < 1.0 + TICK + MARGIN, elapsed
    assert _timeout_answer(received) == {"error": HEAD_TIMEOUT}


def test_a_connection_that_sends_nothing_is_closed_within_the_head_bound(short_bounds: ServeProcess) -> None:
    with _connect(short_bounds) as sock:
        start = time.monotonic()
        received = _closed_by_server(sock, start + 10)
        elapsed = time.monotonic() - start
    assert received is not None and 1.0 <= elapsed < 1.0 + TICK + MARGIN, (received, elapsed)
    assert _timeout_answer(received) == {"error": HEAD_TIMEOUT}


def test_a_stalled_body_is_answered_408_and_closed(short_bounds: ServeProcess) -> None:
    with _connect(short_bounds) as sock:
        sock.sendall(STALLED)  # 10 of the 100,000 declared bytes, then nothing
        start = time.monotonic()
        received = _closed_by_server(sock, start + 10)
        elapsed = time.monotonic() - start
    assert received is not None, "the stalled upload was still open after 10 s"
    assert 2.0 - TICK <= elapsed < 2.0 + TICK + MARGIN, elapsed
    assert _timeout_answer(received) == {
        "error": "the request body did not arrive within 2.0 s of its head; send the whole request without pausing"
    }


def test_a_stalled_predict_body_is_answered_408_and_logged_in_one_line(short_bounds: ServeProcess) -> None:
    """/predict reads its body through FastAPI (the V2 infer routes do not): the cut is no 'unexpected error'."""
    with _connect(short_bounds) as sock:
        sock.sendall(STALLED.replace(b"/v2/models/digits/infer", b"/predict"))
        received = _closed_by_server(sock, time.monotonic() + 10)
    assert received is not None and _timeout_answer(received)["error"].startswith("the request body did not")
    assert httpx.get(f"{short_bounds.url}/v2/health/live", timeout=5).status_code == 200
    log = short_bounds.log_file.read_text()  # type: ignore[attr-defined]
    assert "request body incomplete" in log and "Traceback" not in log and "unexpected error" not in log, log


def test_an_idle_keep_alive_connection_is_closed(short_bounds: ServeProcess) -> None:
    with _connect(short_bounds) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"live":true}'):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        start = time.monotonic()
        rest = _closed_by_server(sock, start + 10)
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert rest == b"" and elapsed < 1.0 + MARGIN, (rest, elapsed)


def test_a_normal_request_with_a_body_still_works(short_bounds: ServeProcess) -> None:
    payload = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    response = httpx.post(f"{short_bounds.url}/v2/models/digits/infer", json=payload, timeout=10)
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"][0]["data"]) == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hundreds_of_slow_connections_leave_health_answering_and_the_log_small(
    repository: Path, tmp_path: Path, protocol: str
) -> None:
    """300 half-open connections (slow heads and stalled bodies, longer-lived than any test deadline) against
    a server with 256 file descriptors, plus 300 malformed requests: /v2/health/live answers within 5 s."""
    log = tmp_path / "serve.log"
    bounds = {"header_timeout_s": "60", "body_timeout_s": "60", "log_interval_s": "2", "http_protocol": protocol}
    with serve_process(repository, log_file=log, open_files=256, **bounds) as server, contextlib.ExitStack() as stack:
        for index in range(300):
            with contextlib.suppress(OSError):  # the server may already have closed an evicted one
                sock = stack.enter_context(_connect(server))
                sock.sendall(SLOW_HEAD[:20] if index % 3 == 0 else STALLED)
        flood_until = time.monotonic() + 20
        for _ in range(300):
            with contextlib.suppress(OSError), _connect(server, timeout=1) as bad:
                bad.sendall(b"\x00\x01 not http\r\n\r\n")
                bad.recv(1024)
            if time.monotonic() > flood_until:
                break
        start = time.monotonic()
        health = httpx.get(f"{server.url}/v2/health/live", timeout=5)
        assert health.status_code == 200 and health.json() == {"live": True}
        assert time.monotonic() - start < 5
        assert server.process.poll() is None
        deadline = time.monotonic() + 10  # the counts of suppressed lines come when the 2 s interval ends
        while "suppressed" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    text = log.read_text()
    assert log.stat().st_size < 32 * 1024, f"{log.stat().st_size} bytes of log:\n{text[:2000]}"
    assert re.search(r"suppressed \d+ log lines|\d+ more like this suppressed", text), text[:2000]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sigterm_with_a_stalled_upload_exits_within_the_grace_period(repository: Path, protocol: str) -> None:
    bounds = {"body_timeout_s": "120", "graceful_shutdown_s": "2", "http_protocol": protocol}
    with serve_process(repository, **bounds) as server, _connect(server) as sock:
        sock.sendall(STALLED)
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200  # the upload was read
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=2 + 5)
        except Exception:
            pytest.fail(f"bnfold serve still running {time.monotonic() - start:.1f} s after SIGTERM")
        assert code == -signal.SIGTERM
        assert time.monotonic() - start < 2 + 5
