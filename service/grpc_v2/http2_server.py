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
- zttp returns HTTP/2 flow-control credit as request data arrives, so the bound on unread requests is the
  socket: reading the connection pauses while one of its streams has more than MAX_UNREAD_BYTES of body its
  call has not taken, and resumes once none has;
- a call waits (`H2Stream.drain`) while more than PENDING_ANSWER_BYTES of its answer wait for the client's
  HTTP/2 window, or while the socket's write buffer is full. A call waiting for the window needs the client's
  WINDOW_UPDATE, so reading resumes while one waits (else a stream that has both its requests and its answers
  backed up would hold its connection forever); meanwhile, once the connection's streams hold more than
  `max_unread_bytes` unread together (the largest message the port accepts), the one holding the most is
  reset with ENHANCE_YOUR_CALM;
- before zttp's per-connection stream cap it ends the connection gracefully: once a client opens stream number
  STREAMS_PER_CONNECTION it sends GOAWAY (NO_ERROR, last stream = that one), answers the streams already open,
  then closes; at stop it sends that GOAWAY at once; a stream opened after a GOAWAY is refused with
  REFUSED_STREAM (which grpc clients retry elsewhere); an idle connection is closed after IDLE_SECONDS. A
  connection closes only once zttp holds no answer bytes for it (the client's window took them all), at the
  latest IDLE_SECONDS after its last stream ended, or when the server stops; a closed connection whose client
  does not take its last bytes is dropped after CLOSING_SECONDS;
- a stream the client resets, or a connection lost, marks its calls gone (their sends do nothing) and wakes
  them; a frame that breaks HTTP/2 closes the connection (logged as a warning);
- a handler that raises (a bug: the gRPC layer answers every error it knows) resets its stream with
  INTERNAL_ERROR, logged with the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import unquote

import zttp

from bnfold.service.edge import ClientGone

log = logging.getLogger("bnfold.service")

# zttp 0.0.35 drops a connection at its 4096th stream (ENHANCE_YOUR_CALM), refused ones included, and lets a client
# have 128 open at once: a client that has 128 in flight when the GOAWAY reaches it opens at most that many more.
STREAMS_PER_CONNECTION = 4096 - 128 - 68
PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x1, 0x2, 0x7, 0xB  # RFC 9113 §7
MAX_UNREAD_BYTES = 64 * 1024  # request body a stream may hold that its call has not taken
PENDING_ANSWER_BYTES = 64 * 1024  # answer bytes a stream may have waiting for the client's window
CANCELLED_CALLS_SECONDS = 1.0  # how long a stop waits for the calls it cancelled to send their trailers
IDLE_SECONDS = 300  # an idle gRPC connection is closed (GOAWAY) after this; clients reconnect when they need to
CLOSING_SECONDS = 10  # a closed connection whose client does not take its last bytes is dropped after this
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
        path = request.path.decode("ascii")
        self.path: str = unquote(path) if "%" in path else path
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
        if not self.gone:
            self.h2.end_message(trailers)
            self.protocol.flush_soon()
        self.ended = True

    def answer(self, status: int, headers: Headers, data: bytes, trailers: Headers | None) -> None:
        """The whole answer at once: head, `data` and `trailers`."""
        if not self.gone:
            h2 = self.h2
            h2.send_response(status, headers)
            h2.send_data(data)
            h2.end_message(trailers)
            self.protocol.flush_soon()
        self.ended = True

    async def drain(self) -> None:
        """Return once at most PENDING_ANSWER_BYTES of this stream's answer wait for the client's window and the
        socket takes more (or the stream is gone): what a call awaits before it hands over more."""
        protocol = self.protocol
        while not self.gone and not protocol.closing:
            if protocol.write_paused:
                protocol.writable.clear()
                await protocol.writable.wait()
            elif (self.h2.pending_bytes or 0) > PENDING_ANSWER_BYTES:
                await protocol.window_wait()
            else:
                return

    def arrived(self, data: bytes) -> None:
        self.body += data
        self._wake()

    def client_ended(self) -> None:
        self.more = False
        self._wake()

    def lost(self) -> None:
        """The client reset the stream (or the server did), or the connection is gone: wake the call, wherever it
        waits."""
        self.gone = True
        self.body.clear()
        self._wake()
        self.protocol.window_opened.set()

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
        self.window_waiters = 0  # calls waiting for the client's window (reading must go on meanwhile)
        self.write_paused = False
        self.closing = False  # close() was called: nothing more is sent
        self.close_when_sent = False  # idle after a GOAWAY, but zttp still holds answer bytes for the window
        self.close_deadline: asyncio.TimerHandle | None = None  # close (or, once closing, abort) at the latest
        self.lost_connection = False
        self.window_opened = asyncio.Event()  # WINDOW_UPDATE, SETTINGS or RST_STREAM came, or a stream is gone
        self.writable = asyncio.Event()  # the socket's write buffer drained
        self.max_unread_bytes = server.max_unread_bytes
        self.idle_timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.server.connections.add(self)
        self.conn.initiate_connection()
        self.flush()
        if self.server.stopping:  # accepted as the server stopped: GOAWAY at once, as on the others
            self.shutdown()
            return
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = self.lost_connection = True
        if self.close_deadline is not None:
            self.close_deadline.cancel()
        self.server.connection_gone(self)
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
            self.goaway_sent = True  # zttp queued its GOAWAY with the error's code
            self.close()
            return
        if self.close_when_sent:
            self.flush()  # what the client's new window released
            self._close_once_sent()
            return
        self.flush_soon()
        if not self.streams:
            self._arm_idle_timer()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    # ---- events --------------------------------------------------------------------------------------------
    def _handle(self, event: object) -> None:
        if isinstance(event, zttp.Data):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.gone:
                stream.arrived(event.data)
                if len(stream.body) > MAX_UNREAD_BYTES:
                    if self.window_waiters == 0:
                        self._pause_reading()
                    else:  # read on only for the window: the connection's streams together stay bounded
                        self._reset_if_flooded()
        elif isinstance(event, zttp.EndOfMessage):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.client_ended()
        elif isinstance(event, zttp.Request):
            self._open(event)
        elif isinstance(event, zttp.WindowUpdate | zttp.Settings):  # a new initial window size opens windows too
            self.window_opened.set()
        elif isinstance(event, zttp.RstStream):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.lost()  # wakes the call, and window waiters
                self.resume_reading_if_drained()
            self.window_opened.set()
        elif isinstance(event, zttp.GoAway):
            self.close_when_idle = True
            if not self.streams:
                self._close_once_sent()
        # PING needs nothing here: zttp answers it, and flush writes the answer.

    def _reset_if_flooded(self) -> None:
        """While reading goes on for a call waiting for the window: once the connection's streams hold more than
        `max_unread_bytes` unread together, reset the one that holds the most (ENHANCE_YOUR_CALM)."""
        streams = self.streams.values()
        if sum(len(s.body) for s in streams) > self.max_unread_bytes:
            largest = max(streams, key=lambda s: len(s.body))
            largest.h2.reset(ENHANCE_YOUR_CALM)
            largest.lost()

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
            log.exception("unexpected error in the gRPC call %s", stream.path)
        finally:
            if not stream.ended and not stream.gone:
                stream.h2.reset(INTERNAL_ERROR)
                self.flush_soon()
            self._stream_done(stream)

    def _stream_done(self, stream: H2Stream) -> None:
        self.streams.pop(stream.h2.stream_id, None)
        if self.closing:
            return
        self.resume_reading_if_drained()
        if not self.streams:
            if self.close_when_idle:
                self._close_once_sent()
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
        if data and self.transport is not None and not self.closing:
            self.transport.write(data)

    async def window_wait(self) -> None:
        """Wait for the client's WINDOW_UPDATE (or a reset, a new SETTINGS, the connection's end), reading the
        connection meanwhile even if a stream holds its unread limit."""
        self.window_waiters += 1
        try:
            self._resume_reading()
            self.window_opened.clear()
            await self.window_opened.wait()
        finally:
            self.window_waiters -= 1

    def resume_reading_if_drained(self) -> None:
        """Read the connection again once no stream holds more than MAX_UNREAD_BYTES its call has not taken."""
        if self.reading_paused and all(len(s.body) <= MAX_UNREAD_BYTES for s in self.streams.values()):
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closing:
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
        if self.closing or self.transport is None:
            return
        self.send_goaway()
        self.flush()
        if not self.streams:
            self._close_once_sent()

    def _close_once_sent(self) -> None:
        """With no stream left: close now, or once the client's window has taken the answer bytes zttp still
        holds (at the latest after IDLE_SECONDS)."""
        if self.streams:
            return  # the last one to end calls this again
        if not self.conn.has_pending_send():
            self.close()
            return
        if not self.close_when_sent:
            self.close_when_sent = True
            self.close_deadline = self.loop.call_later(IDLE_SECONDS, self.close)
        self._resume_reading()  # the WINDOW_UPDATEs that release them must be read

    def close(self) -> None:
        """Write what is queued (with a GOAWAY, if none went yet) and close the connection; drop it if the client
        has not taken that within CLOSING_SECONDS."""
        self._cancel_idle_timer()
        if self.close_deadline is not None:
            self.close_deadline.cancel()
        if self.closing or self.transport is None:
            return
        if not self.goaway_sent:
            self.conn.close()
            self.goaway_sent = True
        self.flush()
        self.closing = True
        self.transport.close()
        self.close_deadline = self.loop.call_later(CLOSING_SECONDS, self.abort)

    def abort(self) -> None:
        """Drop the connection now (its client does not take what is left)."""
        self.closing = True
        if self.transport is not None and not self.lost_connection:
            self.transport.abort()

    def _arm_idle_timer(self) -> None:
        if self.idle_timer is None and self.transport is not None and not self.closing:
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
    `stop(grace)` as on grpc.aio.Server; `tasks` holds the calls in progress. `max_unread_bytes`: how much
    request body a connection's streams may hold unread together while it is read for a call waiting for the
    window."""

    def __init__(
        self, handler: Handler, listener: socket.socket, graceful_shutdown_s: float, max_unread_bytes: int
    ) -> None:
        self.handler, self.listener, self.graceful_shutdown_s = handler, listener, graceful_shutdown_s
        self.max_unread_bytes = max_unread_bytes
        self.connections: set[GrpcH2Protocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._all_closed: asyncio.Event | None = None  # set when the last connection goes (or a force_stop)
        self.forced = False  # force_stop was called
        self.stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: GrpcH2Protocol(self), sock=self.listener)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting and send GOAWAY to every connection; let calls in progress finish, and connections hand
        their clients the answer bytes the clients' windows still hold back, for `grace` seconds (default the
        server's graceful-shutdown time). Then cancel the calls left (each is answered UNAVAILABLE), close the
        connections left, and drop any whose client takes nothing within CANCELLED_CALLS_SECONDS."""
        loop = asyncio.get_running_loop()
        grace = self.graceful_shutdown_s if grace is None else grace
        deadline = loop.time() + grace
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shutdown()
        if self.tasks and grace > 0 and not self.forced:
            await asyncio.wait(set(self.tasks), timeout=grace)
        cancelled = set(self.tasks)
        for task in cancelled:
            task.cancel()
        if cancelled:
            await asyncio.wait(cancelled, timeout=CANCELLED_CALLS_SECONDS)
            await asyncio.sleep(0)  # the step's writes (the cancelled calls' UNAVAILABLE trailers) go out
        if await self._all_close_within(0 if self.forced else deadline - loop.time()):
            return
        for connection in list(self.connections):
            connection.close()
        if not await self._all_close_within(CANCELLED_CALLS_SECONDS):
            for connection in list(self.connections):
                connection.abort()

    async def _all_close_within(self, seconds: float) -> bool:
        """Whether every connection has closed within `seconds` (each closes once its last answer is sent; a
        force_stop ends the wait early)."""
        self._all_closed = closed = asyncio.Event()
        if self.connections and seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), seconds)
        return not self.connections

    def connection_gone(self, connection: GrpcH2Protocol) -> None:
        self.connections.discard(connection)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def force_stop(self) -> None:
        """End every call now (a stop in progress stops waiting for them): each is answered UNAVAILABLE, and
        the connections are closed without waiting for their clients' windows."""
        self.forced = True
        for task in self.tasks:
            task.cancel()
        if self._all_closed is not None:
            self._all_closed.set()  # a stop waiting for connections to close goes on to close them
