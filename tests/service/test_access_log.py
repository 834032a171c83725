"""The access log: uvicorn's line format, one line per request (fast infer path and routed requests alike),
written in batches by the app, never twice, and off at log level warning or with BNFOLD_ACCESS_LOG=false."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from bnfold.service.access_log import BATCH_LINES, FLUSH_AFTER_S, PIPE_BUF, AccessLog, status_text
from tests.load.serve_process import serve_process
from tests.service.builders import write_entry
from tests.service.oracle import json_request


def _scope(path: str, query: bytes = b"", method: str = "GET") -> dict[str, object]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "http_version": "1.1",
        "client": ("10.1.2.3", 4567),
    }


def test_a_line_is_what_uvicorn_writes() -> None:
    stream = io.StringIO()
    access = AccessLog(stream)

    async def log_three() -> None:
        access.record(_scope("/v2/models/m/infer", method="POST"), 200)
        access.record(_scope('/a"b', b"x=1&y=2"), 404)
        access.record(_scope("/odd"), 599)
        access.flush()

    asyncio.run(log_three())
    assert stream.getvalue().splitlines() == [
        'INFO:     10.1.2.3:4567 - "POST /v2/models/m/infer HTTP/1.1" 200 OK',
        'INFO:     10.1.2.3:4567 - "GET /a%22b?x=1&y=2 HTTP/1.1" 404 Not Found',
        'INFO:     10.1.2.3:4567 - "GET /odd HTTP/1.1" 599 ',
    ]
    assert (status_text(413), status_text(503)) == ("413 Request Entity Too Large", "503 Service Unavailable")


def test_lines_are_written_in_batches_and_after_the_flush_delay() -> None:
    stream = io.StringIO()
    access = AccessLog(stream)
    seen: list[int] = []

    async def log_many() -> None:
        for _ in range(BATCH_LINES - 1):
            access.record(_scope("/x"), 200)
        seen.append(len(stream.getvalue().splitlines()))  # nothing written yet: one write per batch
        access.record(_scope("/x"), 200)
        seen.append(len(stream.getvalue().splitlines()))  # the full batch went out in one write
        access.record(_scope("/y"), 200)
        seen.append(len(stream.getvalue().splitlines()))
        await asyncio.sleep(FLUSH_AFTER_S * 5)  # the timer writes the tail
        seen.append(len(stream.getvalue().splitlines()))

    asyncio.run(log_many())
    assert seen == [0, BATCH_LINES, BATCH_LINES, BATCH_LINES + 1]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("access")
    write_entry(root, "digits", rng)
    return root


LINE = re.compile(r'INFO:     127\.0\.0\.1:\d+ - "(.*)" (\d+ .*)')


def _requests(url: str) -> None:
    body = json_request(np.zeros((1, 1, 8, 8), np.float32))
    with httpx.Client(base_url=url) as client:
        assert client.post("/v2/models/digits/infer", json=body).status_code == 200
        assert client.post("/v2/models/digits/infer", content=b"{").status_code == 400
        assert client.get("/v2/models/digits/infer").status_code == 405
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/nothere", params={"x": "1"}).status_code == 404


def test_every_request_gets_one_line(repository: Path, tmp_path: Path) -> None:
    stdout = tmp_path / "stdout.log"
    with serve_process(repository, log_level="info", stdout_file=stdout) as served:
        _requests(served.url)
    lines = [LINE.fullmatch(line) for line in stdout.read_text().splitlines() if line.startswith("INFO:     127")]
    logged = [match.groups() if match else None for match in lines]
    # before these, the lines of the readiness polls made while the server started; nothing is logged twice
    assert sum(1 for entry in logged if entry and "/infer" in entry[0]) == 3
    assert logged[-5:] == [
        ("POST /v2/models/digits/infer HTTP/1.1", "200 OK"),
        ("POST /v2/models/digits/infer HTTP/1.1", "400 Bad Request"),
        ("GET /v2/models/digits/infer HTTP/1.1", "405 Method Not Allowed"),
        ("GET /v2/health/ready HTTP/1.1", "200 OK"),
        ("GET /nothere?x=1 HTTP/1.1", "404 Not Found"),
    ]


@pytest.mark.parametrize(("log_level", "settings"), [("warning", {}), ("info", {"access_log": "false"})])
def test_no_lines_when_off(repository: Path, tmp_path: Path, log_level: str, settings: dict[str, str]) -> None:
    stdout = tmp_path / "stdout.log"
    with serve_process(repository, log_level=log_level, stdout_file=stdout, **settings) as served:
        _requests(served.url)
    assert [line for line in stdout.read_text().splitlines() if '" 200 OK' in line or "HTTP/1.1" in line] == []


def test_a_large_batch_is_written_in_pipe_sized_pieces_cut_between_lines() -> None:
    """Writes of at most PIPE_BUF bytes are atomic on a pipe: workers sharing one never interleave mid-line."""
    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    access = AccessLog(Recording())

    async def log_batch() -> None:
        for index in range(BATCH_LINES):
            access.record(_scope(f"/v2/models/model_{index:03d}/infer", method="POST"), 200)

    asyncio.run(log_batch())
    assert len(writes) > 1 and all(len(text.encode()) <= PIPE_BUF and text.endswith("\n") for text in writes)
    lines = "".join(writes).splitlines()
    assert lines == [
        f'INFO:     10.1.2.3:4567 - "POST /v2/models/model_{index:03d}/infer HTTP/1.1" 200 OK'
        for index in range(BATCH_LINES)
    ]


def test_a_timer_of_an_ended_loop_does_not_hold_back_later_lines() -> None:
    stream = io.StringIO()
    access = AccessLog(stream)

    async def one(path: str, wait: float) -> None:
        access.record(_scope(path), 200)
        await asyncio.sleep(wait)

    asyncio.run(one("/first", 0))  # its loop ends before the timer fires
    asyncio.run(one("/second", FLUSH_AFTER_S * 5))  # a new loop: the pending lines go out on its timer
    assert [line.split('"')[1] for line in stream.getvalue().splitlines()] == [
        "GET /first HTTP/1.1",
        "GET /second HTTP/1.1",
    ]
