"""The access log: one line per HTTP request, as uvicorn writes it, formatted cheaply and written in batches.

uvicorn's own access log goes through `logging` for every request — a LogRecord, a copy of it in the formatter,
the handler's lock and one write(2) plus flush per line — which cost more server CPU than the model for a small
request (≈ 25–60 µs of ≈ 170–260). bnfold turns uvicorn's off and writes the same line itself:

    INFO:     127.0.0.1:52814 - "POST /v2/models/digits_resnet/infer HTTP/1.1" 200 OK

`record` formats the line into a buffer (no record, no lock: it runs on the event loop's thread). The buffer
is written to standard output when it holds BATCH_LINES lines or, at the latest, FLUSH_AFTER_S after its
first line (a timer on the loop), and at shutdown (the lifespan's end, or process exit), in writes of at most
PIPE_BUF bytes cut between lines. No line is dropped; a line is at most 0.1 s late.
Colours are never added (the lines are for log collectors, not terminals).
"""

from __future__ import annotations

import asyncio
import atexit
import http
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TextIO

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BATCH_LINES = 256
FLUSH_AFTER_S = 0.1
PIPE_BUF = 4096  # bytes a write to a pipe is atomic up to (POSIX minimum; Linux's value)
PREFIX = "INFO:     "  # uvicorn's level prefix for INFO
_STATUS = {status.value: f"{status.value} {status.phrase}" for status in http.HTTPStatus}


def status_text(status: int) -> str:
    """'200 OK', as uvicorn prints a status ('599 ' for a code without a phrase)."""
    return _STATUS.get(status) or f"{status} "


class AccessLog:
    """Buffered access-log lines, written to `stream` (standard output by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)  # a forced exit skips the lifespan's flush

    def record(self, scope: Scope, status: int) -> None:
        """The line of one answered request: client, request line, status."""
        client = scope.get("client")
        path = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope.get("path", "")
        if scope.get("query_string"):
            path = f"{path}?{scope['query_string'].decode('ascii', 'replace')}"
        address = f"{client[0]}:{client[1]}" if client else ""
        request = f"{scope['method']} {path.replace(chr(34), '%22')} HTTP/{scope.get('http_version', '1.1')}"
        self._lines.append(f'{PREFIX}{address} - "{request}" {status_text(status)}\n')
        if len(self._lines) >= BATCH_LINES:
            self.flush()
        elif self._timer is None or self._timer_loop is not asyncio.get_running_loop():
            self._timer_loop = asyncio.get_running_loop()  # a timer of a loop that has ended never fires
            self._timer = self._timer_loop.call_later(FLUSH_AFTER_S, self.flush)

    def flush(self) -> None:
        """Write the buffered lines in one write (and cancel the pending timer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        stream = self._stream or sys.stdout
        try:
            for chunk in _chunks(lines):
                stream.write(chunk)
                stream.flush()
        except (OSError, ValueError):  # standard output closed or gone: the lines cannot be written anywhere
            pass


def _chunks(lines: list[str]) -> list[str]:
    """The lines joined into writes of at most PIPE_BUF bytes, cut between lines: a write to a pipe that small
    is atomic, so lines of several worker processes sharing one standard output never interleave mid-line."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode())
        if current and size + length > PIPE_BUF:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += length
    if current:
        chunks.append("".join(current))
    return chunks


class AccessLogMiddleware:
    """Logs every HTTP request that reaches the wrapped app, with the status of its response."""

    def __init__(self, app: ASGIApp, access: AccessLog) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.access.record(scope, message["status"])
            await send(message)

        await self.app(scope, receive, send_logged)
