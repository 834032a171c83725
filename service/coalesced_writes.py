"""One socket write per small HTTP/1.1 response instead of two.

uvicorn writes a response's status line and headers as soon as the app sends `http.response.start`, and its
body on `http.response.body`: two `write` system calls on the connection (on this project's machines each
costs about as much CPU as parsing the JSON body of a small V2 request). `coalescing_protocol(base)` gives
each connection a transport that holds a response head (bytes starting `HTTP/` and ending with the blank
line) until the next write on that connection, then writes both at once; a head with nothing after it in
the same event-loop step (a streamed response, `100 Continue`) is written by a callback at the end of the
step. Bytes are never reordered, dropped or delayed past the step that wrote them; `close()` writes a held
head first. (The gRPC port's HTTP/2 server gathers its writes itself: one per connection and event-loop step.)
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


def _writing_through(base: type[asyncio.Protocol], wrapper: type[Any], prefix: str) -> type[asyncio.Protocol]:
    """A subclass of `base` whose connection writes through `wrapper(transport, loop)`."""

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        base.connection_made(self, transport)
        self.transport = wrapper(self.transport, self.loop)

    return type(f"{prefix}{base.__name__}", (base,), {"connection_made": connection_made})
