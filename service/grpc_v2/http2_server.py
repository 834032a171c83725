"""The gRPC port's server: a uvicorn server of its own speaking HTTP/2 (uvicorn's zttp protocol) on the running
event loop, serving the ASGI app of http2.py.

`GrpcH2Protocol` is uvicorn's HTTP/2 protocol with what gRPC clients need and zttp 0.0.35 lacks: a graceful end
of each connection before zttp's per-connection stream cap, GOAWAY at shutdown, REFUSED_STREAM after it, and a
`SendWindow` per call, so that a call waits while its answers pile up behind a closed HTTP/2 window (zttp parks
them; uvicorn's send does not wait). `GRPC_PROTOCOL` adds one socket write per connection and event-loop step.
"""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

import uvicorn
import zttp
from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol

from bnfold.service.coalesced_writes import step_coalescing_protocol

STREAMS_PER_CONNECTION = 4000  # zttp 0.0.35 drops a connection at its 4096th stream (ENHANCE_YOUR_CALM)
REFUSED_STREAM = 0x7
PENDING_ANSWER_BYTES = 64 * 1024  # answer bytes a stream may have waiting for the client's window
SEND_WINDOW = "bnfold.send_window"  # the scope extension carrying a call's SendWindow
CANCELLED_CALLS_SECONDS = 1.0  # how long a stop waits for the calls it cancelled to send their trailers
IDLE_SECONDS = 300  # an idle gRPC connection is closed (GOAWAY) after this; clients reconnect when they need to


class SendWindow:
    """What a call waits on before it hands over more: the answer bytes zttp still holds for its stream because
    the client's HTTP/2 window is closed (zttp parks them; uvicorn's send does not wait for the window)."""

    def __init__(self, protocol: GrpcH2Protocol, stream: zttp.Stream, cycle: Any) -> None:
        self.protocol, self.stream, self.cycle = protocol, stream, cycle

    async def drain(self) -> None:
        """Return once at most PENDING_ANSWER_BYTES wait for the client's window (or the stream is gone)."""
        while (self.stream.pending_bytes or 0) > PENDING_ANSWER_BYTES and not self.cycle.disconnected:
            if self.protocol.transport.is_closing():
                return
            opened = self.protocol.window_opened
            opened.clear()
            await opened.wait()


def bind_grpc_socket(host: str, port: int, share_port: bool) -> socket.socket:
    """A listening TCP socket on host:port; `share_port` sets SO_REUSEPORT (the workers of `--workers N`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family, reuse_port=share_port, backlog=2048)


class GrpcH2Protocol(ZttpH2Protocol):
    """uvicorn's HTTP/2 protocol (prior knowledge only: gRPC clients never speak HTTP/1.1 to this port) that

    - ends a connection gracefully before zttp's per-connection stream cap: once a client opens stream number
      STREAMS_PER_CONNECTION (counted by stream id, so streams zttp refused count too) it sends GOAWAY
      (NO_ERROR, last stream = that one), answers the streams already open, then closes;
    - sends that GOAWAY at once when the server stops, so clients move new calls to another server instead of
      getting uvicorn's 503;
    - refuses a stream opened after its GOAWAY with REFUSED_STREAM, which grpc clients retry elsewhere;
    - tells waiting calls when the client's window opens (`SendWindow`), and gives each call its SendWindow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.goaway_sent = False
        self.last_stream = 0
        self.window_opened = asyncio.Event()

    def events(self) -> Any:
        for event in super().events():
            if isinstance(event, zttp.WindowUpdate | zttp.RstStream):
                self.window_opened.set()
            yield event

    def handle_request(self, event: zttp.Request) -> None:
        if self.goaway_sent:
            self.conn.stream(event.stream_id).reset(REFUSED_STREAM)
            return
        super().handle_request(event)
        self.last_stream = event.stream_id
        cycle = self.cycles.get(event.stream_id)
        if cycle is not None:
            extensions: dict[str, Any] = cycle.scope["extensions"]
            extensions[SEND_WINDOW] = SendWindow(self, cycle.stream, cycle)
        if event.stream_id >= 2 * STREAMS_PER_CONNECTION - 1:  # client streams have the odd ids 1, 3, 5, ...
            self._send_goaway()

    def shutdown(self) -> None:
        if not self.goaway_sent and not self.transport.is_closing():
            self._send_goaway()
            self.flush()
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self.window_opened.set()
        super().connection_lost(exc)

    def _send_goaway(self) -> None:
        self.conn.close(0, self.last_stream)
        self.goaway_sent = True
        self.shutdown_requested = True  # uvicorn closes the connection once its last stream is answered

    def _close_connection(self) -> None:
        if self.goaway_sent and not self.transport.is_closing():
            self.flush()
            self.transport.close()
            return
        super()._close_connection()


GRPC_PROTOCOL = step_coalescing_protocol(GrpcH2Protocol)  # one socket write per connection and event-loop step


class Http2GrpcServer:
    """The gRPC port as a uvicorn server of its own (HTTP/2, zttp) on the running event loop; `start()` and
    `stop(grace)` as on grpc.aio.Server."""

    def __init__(self, app: Any, listener: socket.socket, graceful_shutdown_s: int) -> None:
        config = uvicorn.Config(
            app,
            http=GRPC_PROTOCOL,
            lifespan="off",
            proxy_headers=False,  # gRPC clients connect directly; uvicorn's X-Forwarded-* middleware costs per call
            access_log=False,
            log_config=None,  # leave the process's logging as `bnfold serve` set it up
            timeout_keep_alive=IDLE_SECONDS,
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        self.listener = listener
        self.server = uvicorn.Server(config)

    async def start(self) -> None:
        config = self.server.config
        config.load()
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup(sockets=[self.listener])

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, GOAWAY to every connection, let calls in progress finish for `grace` seconds (default
        the server's graceful-shutdown time), then cancel the rest (answered UNAVAILABLE)."""
        if grace is not None:
            self.server.config.timeout_graceful_shutdown = math.ceil(grace)
        await self.server.shutdown(sockets=[self.listener])
        cancelled = set(self.server.server_state.tasks)  # uvicorn cancels them but does not wait for them
        if cancelled:
            await asyncio.wait(cancelled, timeout=CANCELLED_CALLS_SECONDS)
            await asyncio.sleep(0)  # the step's coalesced writes (their UNAVAILABLE trailers) go out

    def force_stop(self) -> None:
        """End every call now (a stop in progress stops waiting for them): each is answered UNAVAILABLE."""
        self.server.force_exit = True
        for task in self.server.server_state.tasks:
            task.cancel()
