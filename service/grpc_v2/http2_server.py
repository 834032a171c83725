"""The gRPC port's server: HTTP/2 on zttp (a sans-IO HTTP/2 parser with a Zig core), each request stream handed
straight to the gRPC layer of http2.py as an `H2Stream`, with no ASGI server between them.

Why not uvicorn's HTTP/2 protocol: per call it builds an ASGI scope, a request/response cycle and a message
dict for every event, and checks each message it is sent; on a small model's ModelInfer that costs more CPU
than the model's run. gRPC uses HTTP/2 in one fixed shape (a POST, its body, an answer of a head, DATA and
trailers), so the protocol it needs is small (bench.http2_grpc_floor measures its floor).

What `GrpcH2Protocol` does for every connection (prior knowledge only: gRPC clients never speak HTTP/1.1 here):
- one task per request stream runs the handler on its `H2Stream`; the server's set of those tasks is what a
  stop waits for;
- every byte zttp queues on the connection during one event-loop step goes out in one socket write at the end
  of the step (headers, DATA, trailers and WINDOW_UPDATEs of every stream answered in that step);
- reading the connection pauses while one of its streams has more than MAX_UNREAD_BYTES of body its call has
  not taken, and resumes once none has; a call waits (`H2Stream.drain`) while more than PENDING_ANSWER_BYTES of
  its answer wait for the client's HTTP/2 window, or while the socket's write buffer is full;
- before zttp's per-connection stream cap it ends the connection gracefully: once a client opens stream number
  STREAMS_PER_CONNECTION it sends GOAWAY (NO_ERROR, last stream = that one), answers the streams already open,
  then closes; at stop it sends that GOAWAY at once; a stream opened after a GOAWAY is refused with
  REFUSED_STREAM (which grpc clients retry elsewhere); an idle connection is closed after IDLE_SECONDS;
- a stream the client resets, or a connection lost, marks its calls gone (their sends do nothing) and wakes
  them; a frame that breaks HTTP/2 closes the connection (logged as a warning);
- a handler that raises (a bug: the gRPC layer answers every error it knows) resets its stream with
  INTERNAL_ERROR, logged with the traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import cast

import zttp

from bnfold.service.edge import ClientGone

log = logging.getLogger("bnfold.service")

STREAMS_PER_CONNECTION = 4000  # zttp 0.0.35 drops a connection at its 4096th stream (ENHANCE_YOUR_CALM)
PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM = 0x1, 0x2, 0x7  # HTTP/2 error codes (RFC 9113 §7)
MAX_UNREAD_BYTES = 64 * 1024  # request body a stream may hold that its call has not taken
PENDING_ANSWER_BYTES = 64 * 1024  # answer bytes a stream may have waiting for the client's window
CANCELLED_CALLS_SECONDS = 1.0  # how long a stop waits for the calls it cancelled to send their trailers
IDLE_SECONDS = 300  # an idle gRPC connection is closed (GOAWAY) after this; clients reconnect when they need to
Headers = list[tuple[bytes, bytes]]


class H2Stream:
    """One request stream of a connection: the request's head (`method`, `path`, `header`), its body as it
    arrives (`receive`), and the answer (`send_head`, `send_data`, `end`; `answer` for all three at once).
    Once the stream is `gone` (reset by the client, or its connection lost) sends do nothing and `receive`
    raises ClientGone."""

    __slots__ = ("_headers", "_waiter", "body", "ended", "gone", "h2", "method", "more", "path", "protocol")

    def __init__(self, protocol: GrpcH2Protocol, request: zttp.Request) -> None:
        self.protocol = protocol
        self.h2: zttp.Stream = protocol.conn.stream(request.stream_id)
        self.method: bytes = request.method
        self.path: str = request.path.decode("ascii")
        self._headers = request.headers
        self.body = bytearray()  # arrived, not yet taken by `receive`
        self.more = not request.end_stream  # the client may still send body
        self.gone = False
        self.ended = False  # the answer is complete
        self._waiter: asyncio.Future[None] | None = None

    def header(self, name: bytes) -> bytes | None:
        """The value of the request header `name` (lowercase), or None."""
        headers = self._headers
        if isinstance(headers, zttp.HeaderBlock):
            return headers.get(name)
        for key, value in headers:
            if key == name:
                return value
        return None

    def headers(self) -> Headers:
        """Every request header (lowercase names, pseudo-headers left out), in the order they came."""
        headers = self._headers
        if isinstance(headers, zttp.HeaderBlock):
            return headers.to_list(lowercase_names=True)
        return [(name.lower(), value) for name, value in headers]

    async def receive(self) -> bytes:
        """The body bytes that arrived since the last call, waiting until some arrive or the client ends its
        side (then `more` is False and the bytes may be b""); ClientGone once the stream is gone."""
        while not self.body and self.more and not self.gone:
            self._waiter = waiter = self.protocol.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if self.gone:
            raise ClientGone
        data = bytes(self.body)
        self.body.clear()
        self.protocol.resume_reading_if_drained()
        return data

    def send_head(self, status: int, headers: Headers) -> None:
        if not self.gone:
            self.h2.send_response(status, headers)
            self.protocol.flush_soon()

    def send_data(self, data: bytes) -> None:
        if not self.gone:
            self.h2.send_data(data)
            self.protocol.flush_soon()

    def end(self, trailers: Headers | None) -> None:
        """End the answer, with `trailers` (or none)."""
        self.ended = True
        if not self.gone:
            self.h2.end_message(trailers)
            self.protocol.flush_soon()

    def answer(self, status: int, headers: Headers, data: bytes, trailers: Headers | None) -> None:
        """The whole answer at once: head, `data` and `trailers`."""
        self.ended = True
        if not self.gone:
            h2 = self.h2
            h2.send_response(status, headers)
            h2.send_data(data)
            h2.end_message(trailers)
            self.protocol.flush_soon()

    async def drain(self) -> None:
        """Return once at most PENDING_ANSWER_BYTES of this stream's answer wait for the client's window and the
        socket takes more (or the stream is gone): what a call awaits before it hands over more."""
        protocol = self.protocol
        while not self.gone:
            if protocol.write_paused:
                event = protocol.writable
            elif (self.h2.pending_bytes or 0) > PENDING_ANSWER_BYTES:
                event = protocol.window_opened
            else:
                return
            event.clear()
            await event.wait()

    def arrived(self, data: bytes) -> None:
        self.body += data
        self._wake()

    def client_ended(self) -> None:
        self.more = False
        self._wake()

    def lost(self) -> None:
        """The client reset the stream, or the connection is gone."""
        self.gone = True
        self.body.clear()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


Handler = Callable[[H2Stream], Awaitable[None]]


class GrpcH2Protocol(asyncio.Protocol):
    """One gRPC connection (the module says what it does)."""

    def __init__(self, server: Http2GrpcServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.conn = zttp.Connection(zttp.SERVER, protocol=zttp.HTTP2)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.last_stream = 0
        self.goaway_sent = False
        self.close_when_idle = False  # a GOAWAY went either way: close once the last stream is answered
        self.flush_scheduled = False
        self.reading_paused = False
        self.write_paused = False
        self.window_opened = asyncio.Event()  # the client sent WINDOW_UPDATE or RST_STREAM
        self.writable = asyncio.Event()  # the socket's write buffer drained
        self.idle_timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.server.connections.add(self)
        self.conn.initiate_connection()
        self.flush()
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._cancel_idle_timer()
        for stream in self.streams.values():
            stream.lost()
        self.window_opened.set()
        self.write_paused = False
        self.writable.set()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self._cancel_idle_timer()
        conn = self.conn
        try:
            conn.receive_data(data)
            while (event := conn.next_event()) is not zttp.NEED_DATA and event is not zttp.CONNECTION_CLOSED:
                self._handle(event)
        except zttp.RemoteProtocolError as error:
            log.warning("a gRPC client broke HTTP/2 (%s); its connection is closed", error)
            self.close()
            return
        self.flush_soon()
        if not self.streams:
            self._arm_idle_timer()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    # ---- events --------------------------------------------------------------------------------------------
    def _handle(self, event: object) -> None:
        kind = type(event)
        if kind is zttp.Data:
            assert isinstance(event, zttp.Data)
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.gone:
                stream.arrived(event.data)
                if len(stream.body) > MAX_UNREAD_BYTES and not self.reading_paused and self.transport is not None:
                    self.reading_paused = True
                    self.transport.pause_reading()
        elif kind is zttp.EndOfMessage:
            assert isinstance(event, zttp.EndOfMessage)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.client_ended()
        elif kind is zttp.Request:
            assert isinstance(event, zttp.Request)
            self._open(event)
        elif kind is zttp.WindowUpdate:
            self.window_opened.set()
        elif kind is zttp.RstStream:
            assert isinstance(event, zttp.RstStream)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.lost()
                self.resume_reading_if_drained()
            self.window_opened.set()
        elif kind is zttp.GoAway:
            self.close_when_idle = True
            if not self.streams:
                self.close()
        # SETTINGS and PING need nothing here: zttp applies and acknowledges them, and flush writes the answer.

    def _open(self, request: zttp.Request) -> None:
        if self.goaway_sent:
            self.conn.stream(request.stream_id).reset(REFUSED_STREAM)
            return
        if not request.target.isascii():
            self.conn.stream(request.stream_id).reset(PROTOCOL_ERROR)  # RFC 9113 §8.1.1
            return
        stream = H2Stream(self, request)
        self.streams[request.stream_id] = stream
        self.last_stream = request.stream_id
        tasks = self.server.tasks
        task = self.loop.create_task(self._run(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if request.stream_id >= 2 * STREAMS_PER_CONNECTION - 1:  # client streams have the odd ids 1, 3, 5, ...
            self.send_goaway()

    async def _run(self, stream: H2Stream) -> None:
        try:
            await self.server.handler(stream)
        except Exception:
            log.exception("unexpected error in the gRPC call %s; its stream is reset", stream.path)
        finally:
            if not stream.ended and not stream.gone:
                stream.h2.reset(INTERNAL_ERROR)
                self.flush_soon()
            self._stream_done(stream)

    def _stream_done(self, stream: H2Stream) -> None:
        self.streams.pop(stream.h2.stream_id, None)
        if self.transport is None or self.transport.is_closing():
            return
        self.resume_reading_if_drained()
        if not self.streams:
            if self.close_when_idle:
                self.close()
            else:
                self._arm_idle_timer()

    # ---- sending, reading, closing -------------------------------------------------------------------------
    def flush_soon(self) -> None:
        """Write what zttp queued at the end of this event-loop step (one write for everything queued in it)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def resume_reading_if_drained(self) -> None:
        """Read the connection again once no stream holds more than MAX_UNREAD_BYTES its call has not taken."""
        if not self.reading_paused or self.transport is None:
            return
        if all(len(stream.body) <= MAX_UNREAD_BYTES for stream in self.streams.values()):
            self.reading_paused = False
            self.transport.resume_reading()

    def send_goaway(self) -> None:
        """GOAWAY (NO_ERROR, last stream = the last one opened): the streams open are answered, then it closes."""
        if not self.goaway_sent:
            self.conn.close(0, self.last_stream)
            self.goaway_sent = self.close_when_idle = True
            self.flush_soon()

    def shutdown(self) -> None:
        """The server stops: GOAWAY now; close at once when idle, else once the last stream is answered."""
        if self.transport is None or self.transport.is_closing():
            return
        self.send_goaway()
        self.flush()
        if not self.streams:
            self.close()

    def close(self) -> None:
        """Write what is queued (with a GOAWAY, if none went yet) and close the connection."""
        self._cancel_idle_timer()
        if self.transport is None or self.transport.is_closing():
            return
        if not self.goaway_sent:
            self.conn.close()
            self.goaway_sent = True
        self.flush()
        self.transport.close()

    def _arm_idle_timer(self) -> None:
        if self.idle_timer is None and self.transport is not None and not self.transport.is_closing():
            self.idle_timer = self.loop.call_later(IDLE_SECONDS, self.close)

    def _cancel_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None


def bind_grpc_socket(host: str, port: int, share_port: bool) -> socket.socket:
    """A listening TCP socket on host:port; `share_port` sets SO_REUSEPORT (the workers of `--workers N`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family, reuse_port=share_port, backlog=2048)


class Http2GrpcServer:
    """The gRPC port on the running event loop: `handler` runs once per request stream. `start()` and
    `stop(grace)` as on grpc.aio.Server; `tasks` holds the calls in progress."""

    def __init__(self, handler: Handler, listener: socket.socket, graceful_shutdown_s: float) -> None:
        self.handler, self.listener, self.graceful_shutdown_s = handler, listener, graceful_shutdown_s
        self.connections: set[GrpcH2Protocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: GrpcH2Protocol(self), sock=self.listener)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, GOAWAY to every connection, let calls in progress finish for `grace` seconds (default
        the server's graceful-shutdown time), then cancel the rest (each is answered UNAVAILABLE) and close."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shutdown()
        grace = self.graceful_shutdown_s if grace is None else grace
        if self.tasks and grace > 0:
            await asyncio.wait(set(self.tasks), timeout=grace)
        cancelled = set(self.tasks)
        for task in cancelled:
            task.cancel()
        if cancelled:
            await asyncio.wait(cancelled, timeout=CANCELLED_CALLS_SECONDS)
            await asyncio.sleep(0)  # the step's writes (the cancelled calls' UNAVAILABLE trailers) go out
        for connection in list(self.connections):
            connection.close()

    def force_stop(self) -> None:
        """End every call now (a stop in progress stops waiting for them): each is answered UNAVAILABLE."""
        for task in self.tasks:
            task.cancel()
