"""One socket write per small HTTP response instead of two (HTTP/1.1), or per event-loop step (HTTP/2).

uvicorn writes a response's status line and headers as soon as the app sends `http.response.start`, and its
body on `http.response.body`: two `write` system calls on the connection (on this project's machines each
costs about as much CPU as parsing the JSON body of a small V2 request). `coalescing_protocol(base)` gives
each connection a transport that holds a response head (bytes starting `HTTP/` and ending with the blank
line) until the next write on that connection, then writes both at once; a head with nothing after it in
the same event-loop step (a streamed response, `100 Continue`) is written by a callback at the end of the
step. Bytes are never reordered, dropped or delayed past the step that wrote them; `close()` writes a held
head first.

HTTP/2 writes more pieces per response — HEADERS, DATA, trailing HEADERS, each written as the app sends it,
and WINDOW_UPDATEs as requests arrive — and multiplexes many responses on one connection, so
`step_coalescing_protocol(base)` gives each connection a transport that gathers every write of one event-loop
step and writes them, in order, as one buffer at the end of the step.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """A transport wrapper that joins a held response head to the write that follows it."""

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif isinstance(data, bytes) and data[-4:] == b"\r\n\r\n" and data[:5] == b"HTTP/":
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write a held head now (the end of the event-loop step that wrote it, or before closing)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:  # every other transport method, unchanged
        return getattr(self._transport, name)


def coalescing_protocol(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """`base` (uvicorn's H11Protocol or HttpToolsProtocol) writing through a `CoalescingTransport`."""
    return _writing_through(base, CoalescingTransport, "Coalescing")


class StepCoalescingTransport:
    """A transport wrapper that writes everything written during one event-loop step as one buffer, in order,
    at the end of that step."""

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, pieces: Any) -> None:
        for piece in pieces:
            self.write(piece)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def flush(self) -> None:
        """Write what this step gathered (at the end of the step, or before closing)."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # every other transport method, unchanged
        return getattr(self._transport, name)


def step_coalescing_protocol(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """`base` (an HTTP/2 protocol of uvicorn's) writing through a `StepCoalescingTransport`."""
    return _writing_through(base, StepCoalescingTransport, "StepCoalescing")


def _writing_through(base: type[asyncio.Protocol], wrapper: type[Any], prefix: str) -> type[asyncio.Protocol]:
    """A subclass of `base` whose connection writes through `wrapper(transport, loop)`."""

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        base.connection_made(self, transport)
        self.transport = wrapper(self.transport, self.loop)

    return type(f"{prefix}{base.__name__}", (base,), {"connection_made": connection_made})
