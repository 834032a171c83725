"""The gRPC port's HTTP/2 server (`Http2GrpcServer`) on its own, with small handlers, over real loopback
sockets and a zttp client: one socket write per answer, the bounds on unread requests and pending answers,
stream and connection ends (reset, GOAWAY, refused, idle, broken HTTP/2, a handler that raises)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import zttp

from bnfold.service.edge import ClientGone
from bnfold.service.grpc_v2 import http2_server
from bnfold.service.grpc_v2.http2_server import (
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    MAX_UNREAD_BYTES,
    PENDING_ANSWER_BYTES,
    REFUSED_STREAM,
    GrpcH2Protocol,
    H2Stream,
    Http2GrpcServer,
)

HEAD = [(b"content-type", b"application/grpc")]
DATA_FRAME, PING_FRAME = 0x0, 0x6
OK = [(b"grpc-status", b"0")]
Handler = Callable[[H2Stream], Awaitable[None]]


@dataclass
class Answer:
    """What the client saw on one stream."""

    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    reset: int | None = None

    @property
    def done(self) -> bool:
        return self.trailers is not None or self.reset is not None


def split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """The whole HTTP/2 frames at the start of `data`, each with its 9-byte header (length, type, flags,
    stream), and the bytes of a frame not yet whole."""
    found = []
    while len(data) >= 9 and len(data) >= 9 + (length := int.from_bytes(data[:3], "big")):
        found.append(data[: 9 + length])
        data = data[9 + length :]
    return found, data


class Client:
    """A zttp HTTP/2 client on an asyncio connection; `pump` reads and answers until a condition holds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = zttp.Connection(zttp.CLIENT, protocol=zttp.HTTP2)
        self.conn.initiate_connection()
        self.answers: dict[int, Answer] = {}
        self.goaway: tuple[int, int] | None = None
        self.closed = False
        self.settled = False  # the server's SETTINGS arrived
        self.unparsed = b""  # bytes of a frame not yet whole (take_answers False)
        self.send()

    @classmethod
    async def connect(cls, port: int) -> Client:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        await client.pump(lambda: client.settled)
        await asyncio.sleep(0.05)  # the server has read our SETTINGS (and written its ACK) too
        return client

    def request(self, path: str, body: bytes = b"", end: bool = True, send: bool = True) -> zttp.Stream:
        """Open a stream with `body` (ending the request side unless `end` is False); written at once unless
        `send` is False (then with the next `send()`)."""
        stream = self.conn.send_request(b"POST", path.encode(), b"2", [(b"content-type", b"application/grpc")])
        self.answers[stream.stream_id] = Answer()
        if body:
            stream.send_data(body)
        if end:
            stream.end_message()
        if send:
            self.send()
        return stream

    def send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def pump(
        self, until: Callable[[], bool], timeout: float = 10, take_answers: bool = True, pinged: bool = False
    ) -> None:
        """Read what the server sends (and send what zttp answers) until `until()` holds; TimeoutError after
        `timeout` seconds. `take_answers` False drops the server's DATA frames unseen, so the client never
        returns window for them (a client that stops reading its answers but goes on sending); `pinged` drops
        the PING acknowledgements of `ping()`, which zttp did not send."""
        async with asyncio.timeout(timeout):
            while not until():
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    if until():
                        return
                    raise ConnectionError("the server closed the connection")
                if not take_answers:
                    whole, self.unparsed = split_frames(self.unparsed + data)
                    dropped = {DATA_FRAME, PING_FRAME} if pinged else {DATA_FRAME}
                    data = b"".join(f for f in whole if f[3] not in dropped)
                self.conn.receive_data(data)
                while (event := self.conn.next_event()) is not zttp.NEED_DATA:
                    self._record(event)
                self.send()

    def _record(self, event: Any) -> None:
        if isinstance(event, zttp.Settings):
            self.settled = True
        elif isinstance(event, zttp.Response):
            self.answers[event.stream_id].status = event.status_code
        elif isinstance(event, zttp.Data):
            self.answers[event.stream_id].body += event.data
        elif isinstance(event, zttp.EndOfMessage):
            self.answers[event.stream_id].trailers = list(event.trailers)
        elif isinstance(event, zttp.RstStream):
            self.answers[event.stream_id].reset = event.error_code
        elif isinstance(event, zttp.GoAway):
            self.goaway = (event.error_code, event.last_stream_id)

    def ping(self) -> None:
        """A PING frame, written raw (zttp's client cannot send one)."""
        self.writer.write(bytes([0, 0, 8, PING_FRAME, 0, 0, 0, 0, 0]) + b"bnfold!!")

    def close(self) -> None:
        self.writer.close()


async def started(handler: Handler, grace: float = 5, max_unread_bytes: int = 8 << 20) -> tuple[Http2GrpcServer, int]:
    listener = socket.create_server(("127.0.0.1", 0))
    server = Http2GrpcServer(handler, listener, grace, max_unread_bytes)
    await server.start()
    return server, listener.getsockname()[1]


def only_connection(server: Http2GrpcServer) -> GrpcH2Protocol:
    (connection,) = server.connections
    return connection


async def echo_length(stream: H2Stream) -> None:
    """Read the whole body, answer its length."""
    total = 0
    while stream.more or stream.body:
        total += len(await stream.receive())
    stream.answer(200, HEAD, str(total).encode(), OK)


def test_a_unary_answer_leaves_in_one_socket_write() -> None:
    """Head, DATA and trailers of an answer, and of each of three calls answered in the same event-loop step,
    go out in one write per step: 1 write for the first call, 1 for three calls that arrive together."""

    async def scenario() -> tuple[list[int], list[Answer]]:
        server, port = await started(echo_length)
        client = await Client.connect(port)
        connection = only_connection(server)
        transport = connection.transport
        assert transport is not None
        writes: list[int] = []
        write = transport.write
        transport.write = lambda data: (writes.append(len(data)), write(data))[1]  # type: ignore[method-assign]
        first = client.request("/x", b"abcd").stream_id
        await client.pump(lambda: client.answers[first].done)
        counted = len(writes)
        together = [client.request("/x", bytes(n), send=False).stream_id for n in (1, 2, 3)]
        client.send()  # the three requests in one write
        await client.pump(lambda: all(client.answers[s].done for s in together))
        counts = [counted, len(writes) - counted]
        client.close()
        await server.stop(1)
        return counts, [client.answers[s] for s in (first, *together)]

    writes, answers = asyncio.run(scenario())
    assert writes == [1, 1]
    assert [(a.status, bytes(a.body), a.trailers) for a in answers] == [
        (200, b"4", OK),
        (200, b"1", OK),
        (200, b"2", OK),
        (200, b"3", OK),
    ]


def test_reading_pauses_while_a_stream_holds_its_limit_unread() -> None:
    """A call that does not take its body: the server stops reading the connection once the stream holds more
    than MAX_UNREAD_BYTES (what it holds stays under that plus one socket read), and reads on once the call
    takes it; all 4 MiB arrive."""
    sent = 4 << 20
    gate = asyncio.Event()

    async def slow(stream: H2Stream) -> None:
        await gate.wait()
        await echo_length(stream)

    async def scenario() -> tuple[bool, int, Answer]:
        server, port = await started(slow)
        client = await Client.connect(port)
        stream_id = client.request("/x", bytes(sent)).stream_id
        connection = only_connection(server)
        pumping = asyncio.ensure_future(client.pump(lambda: client.answers[stream_id].done))
        deadline = time.monotonic() + 10
        while not connection.reading_paused and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        paused = connection.reading_paused
        await asyncio.sleep(0.2)  # nothing more is read while paused
        held = max(len(s.body) for s in connection.streams.values())
        gate.set()
        await pumping
        client.close()
        await server.stop(1)
        return paused, held, client.answers[stream_id]

    paused, held, answer = asyncio.run(scenario())
    assert paused
    assert MAX_UNREAD_BYTES < held <= MAX_UNREAD_BYTES + 256 * 1024
    assert (bytes(answer.body), answer.trailers) == (str(sent).encode(), OK)


def test_a_call_hands_over_answers_only_while_the_client_takes_them() -> None:
    """A streamed answer of 64 messages of 16 KiB to a client that does not read: the call has handed over at
    most the client's 64 KiB window plus PENDING_ANSWER_BYTES (10 messages) when it waits; once the client
    reads, every message arrives."""
    chunk = 16 * 1024
    handed: list[int] = []

    async def streaming(stream: H2Stream) -> None:
        stream.send_head(200, HEAD)
        for n in range(64):
            stream.send_data(bytes(chunk))
            handed.append(n)
            await stream.drain()
        stream.end(OK)

    async def scenario() -> tuple[int, Answer]:
        server, port = await started(streaming)
        client = await Client.connect(port)
        stream_id = client.request("/x").stream_id
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        waiting_at = len(handed)
        await client.pump(lambda: client.answers[stream_id].done)
        client.close()
        await server.stop(1)
        return waiting_at, client.answers[stream_id]

    waiting_at, answer = asyncio.run(scenario())
    assert waiting_at <= (65535 + PENDING_ANSWER_BYTES) // chunk + 1
    assert (len(answer.body), answer.trailers) == (64 * chunk, OK)


def test_a_client_reset_wakes_the_call_and_the_connection_serves_on() -> None:
    """RST_STREAM from the client while its call waits for body: the call's receive raises ClientGone at once;
    the next call on the connection is answered."""
    outcome: list[str] = []

    async def waiting(stream: H2Stream) -> None:
        if stream.path == "/wait":
            try:
                await stream.receive()
            except ClientGone:
                outcome.append("gone")
            stream.send_data(b"ignored")  # sends on a gone stream do nothing
            return
        await echo_length(stream)

    async def scenario() -> Answer:
        server, port = await started(waiting)
        client = await Client.connect(port)
        client.request("/wait", end=False).reset(0x8)  # CANCEL
        client.send()
        next_id = client.request("/x", b"xyz").stream_id
        await client.pump(lambda: client.answers[next_id].done)
        client.close()
        await server.stop(1)
        return client.answers[next_id]

    answer = asyncio.run(scenario())
    assert outcome == ["gone"]
    assert (bytes(answer.body), answer.trailers) == (b"3", OK)


def test_a_handler_that_raises_resets_its_stream(caplog: pytest.LogCaptureFixture) -> None:
    async def failing(stream: H2Stream) -> None:
        if stream.path == "/boom":
            raise RuntimeError("a bug")
        await echo_length(stream)

    async def scenario() -> tuple[Answer, Answer]:
        server, port = await started(failing)
        client = await Client.connect(port)
        boom = client.request("/boom", b"a").stream_id
        fine = client.request("/x", b"ab").stream_id
        await client.pump(lambda: client.answers[boom].done and client.answers[fine].done)
        client.close()
        await server.stop(1)
        return client.answers[boom], client.answers[fine]

    with caplog.at_level(logging.ERROR, logger="bnfold.service"):
        boom, fine = asyncio.run(scenario())
    assert (boom.reset, boom.trailers) == (INTERNAL_ERROR, None)
    assert (bytes(fine.body), fine.trailers) == (b"2", OK)
    (record,) = [r for r in caplog.records if "/boom" in r.getMessage()]
    assert record.getMessage() == "unexpected error in the gRPC call /boom"
    assert record.exc_info is not None and str(record.exc_info[1]) == "a bug"


async def stopping_with_a_call_open(handler: Handler) -> tuple[Client, int, asyncio.Future[None]]:
    """A server running `handler`, a client whose call (body b"abcde") the handler holds, and the server's
    stop(10) begun: returns once the client has the GOAWAY, with the call's stream id and the stop's future."""
    server, port = await started(handler)
    client = await Client.connect(port)
    stream_id = client.request("/x", b"abcde").stream_id
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(server.stop(10))
    await client.pump(lambda: client.goaway is not None)
    return client, stream_id, stopping


def test_a_stop_sends_goaway_refuses_new_streams_and_answers_the_open_one() -> None:
    """stop(grace) while stream 1 waits: GOAWAY (NO_ERROR, last stream 1) at once, stream 3 opened after it is
    refused (REFUSED_STREAM), stream 1 is answered when its call goes on, and then the connection closes."""
    gate = asyncio.Event()

    async def gated(stream: H2Stream) -> None:
        await gate.wait()
        await echo_length(stream)

    async def scenario() -> tuple[tuple[int, int] | None, Answer, Answer, bool]:
        client, first, stopping = await stopping_with_a_call_open(gated)
        late = client.request("/x", b"z").stream_id
        await client.pump(lambda: client.answers[late].done)
        gate.set()
        await client.pump(lambda: client.answers[first].done and client.closed, timeout=5)
        await stopping
        client.close()
        return client.goaway, client.answers[first], client.answers[late], client.closed

    goaway, first, late, closed = asyncio.run(scenario())
    assert goaway == (0, 1)
    assert (late.reset, late.trailers) == (REFUSED_STREAM, None)
    assert (bytes(first.body), first.trailers) == (b"5", OK)
    assert closed


def test_an_idle_connection_is_closed_with_goaway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http2_server, "IDLE_SECONDS", 0.3)

    async def scenario() -> tuple[Answer, tuple[int, int] | None, float]:
        server, port = await started(echo_length)
        client = await Client.connect(port)
        stream_id = client.request("/x", b"ab").stream_id
        await client.pump(lambda: client.answers[stream_id].done)
        answered = time.monotonic()
        await client.pump(lambda: client.closed, timeout=5)
        idle = time.monotonic() - answered
        client.close()
        await server.stop(1)
        return client.answers[stream_id], client.goaway, idle

    answer, goaway, idle = asyncio.run(scenario())
    assert (bytes(answer.body), goaway) == (b"2", (0, 1))
    assert 0.25 <= idle < 3


def test_bytes_that_are_not_http2_close_the_connection_with_one_goaway(caplog: pytest.LogCaptureFixture) -> None:
    """An HTTP/1.1 request on the gRPC port: the server's SETTINGS, then exactly one GOAWAY, with PROTOCOL_ERROR
    (1; not a second, NO_ERROR one), then EOF, with a warning in the log; the server serves on."""
    goaway = 0x7

    async def scenario() -> tuple[bytes, Answer]:
        server, port = await started(echo_length)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        async with asyncio.timeout(5):
            received = await reader.read()  # to EOF
        writer.close()
        client = await Client.connect(port)
        stream_id = client.request("/x", b"abc").stream_id
        await client.pump(lambda: client.answers[stream_id].done)
        client.close()
        await server.stop(1)
        return received, client.answers[stream_id]

    with caplog.at_level(logging.WARNING, logger="bnfold.service"):
        received, answer = asyncio.run(scenario())
    whole, rest = split_frames(received)
    assert rest == b""
    codes = [int.from_bytes(f[13:17], "big") for f in whole if f[3] == goaway]  # payload: last stream, code
    assert codes == [1]
    assert (bytes(answer.body), answer.trailers) == (b"3", OK)
    (record,) = [r for r in caplog.records if "broke HTTP/2" in r.getMessage()]
    assert record.levelno == logging.WARNING


def test_a_stream_backed_up_both_ways_does_not_hold_its_connection() -> None:
    """A call that writes 200 KiB before it reads its 1 MiB body (a stream whose in-flight slots are full):
    the body stops the server reading at its unread limit while the answer waits for the client's window. The
    server reads on for the client's WINDOW_UPDATE, so both complete."""
    answer_bytes, body_bytes = 200 * 1024, 1 << 20

    async def writes_first(stream: H2Stream) -> None:
        stream.send_head(200, HEAD)
        stream.send_data(bytes(answer_bytes))
        await stream.drain()
        total = 0
        while stream.more or stream.body:
            total += len(await stream.receive())
        stream.send_data(str(total).encode())
        stream.end(OK)

    async def scenario() -> Answer:
        server, port = await started(writes_first)
        client = await Client.connect(port)
        stream_id = client.request("/x", bytes(body_bytes)).stream_id
        await client.pump(lambda: client.answers[stream_id].done)
        client.close()
        await server.stop(1)
        return client.answers[stream_id]

    answer = asyncio.run(scenario())
    assert (bytes(answer.body[answer_bytes:]), answer.trailers) == (str(body_bytes).encode(), OK)
    assert len(answer.body) == answer_bytes + len(str(body_bytes))


def test_an_answer_longer_than_the_window_is_sent_whole_after_goaway() -> None:
    """A stop while a call is about to answer 150,000 bytes (more than the client's 64 KiB window): the
    connection stays open until the client's window has taken every byte, then closes."""
    gate = asyncio.Event()
    size = 150_000

    async def big(stream: H2Stream) -> None:
        await gate.wait()
        stream.send_head(200, HEAD)
        stream.send_data(bytes(size))
        await stream.drain()
        stream.end(OK)

    async def scenario() -> tuple[int, list[tuple[bytes, bytes]] | None, bool]:
        client, stream_id, stopping = await stopping_with_a_call_open(big)
        gate.set()
        await client.pump(lambda: client.answers[stream_id].done and client.closed)
        await stopping
        client.close()
        answer = client.answers[stream_id]
        return len(answer.body), answer.trailers, client.closed

    assert asyncio.run(scenario()) == (size, OK, True)


def test_a_lost_connection_wakes_the_call_waiting_for_its_body() -> None:
    outcome: list[str] = []

    async def waiting(stream: H2Stream) -> None:
        try:
            await stream.receive()
        except ClientGone:
            outcome.append("gone")

    async def scenario() -> int:
        server, port = await started(waiting)
        client = await Client.connect(port)
        client.request("/wait", end=False)
        await asyncio.sleep(0.05)
        client.close()
        deadline = time.monotonic() + 5
        while (server.tasks or server.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        left = len(server.tasks) + len(server.connections)
        await server.stop(1)
        return left

    assert asyncio.run(scenario()) == 0
    assert outcome == ["gone"]


def test_a_client_goaway_lets_the_open_call_finish_then_closes() -> None:
    gate = asyncio.Event()

    async def gated(stream: H2Stream) -> None:
        await gate.wait()
        await echo_length(stream)

    async def scenario() -> tuple[Answer, bool]:
        server, port = await started(gated)
        client = await Client.connect(port)
        stream_id = client.request("/x", b"abcdef").stream_id
        client.conn.close()  # the client's GOAWAY
        client.send()
        await asyncio.sleep(0.05)
        gate.set()
        await client.pump(lambda: client.answers[stream_id].done and client.closed)
        client.close()
        await server.stop(1)
        return client.answers[stream_id], client.closed

    answer, closed = asyncio.run(scenario())
    assert (bytes(answer.body), answer.trailers, closed) == (b"6", OK, True)


def test_a_stream_that_floods_while_its_answers_are_not_taken_is_reset() -> None:
    """A client that takes none of its answer (no window returned) but goes on sending body: while the call
    waits for the window the server reads on, and once the stream is more than max_unread_bytes (256 KiB here)
    ahead of its call it is reset with ENHANCE_YOUR_CALM; what it held is dropped and the call ends."""
    ended: list[str] = []

    async def writes_first(stream: H2Stream) -> None:
        stream.send_head(200, HEAD)
        stream.send_data(bytes(200 * 1024))
        await stream.drain()  # returns once the stream is gone
        ended.append("gone" if stream.gone else "drained")

    async def scenario() -> tuple[Answer, int, int]:
        server, port = await started(writes_first, max_unread_bytes=256 * 1024)
        client = await Client.connect(port)
        stream_id = client.request("/x", bytes(4 << 20)).stream_id
        await client.pump(lambda: client.answers[stream_id].done, take_answers=False)
        streams = len(only_connection(server).streams)
        client.close()
        await server.stop(1)
        return client.answers[stream_id], streams, len(server.tasks)

    answer, streams, tasks = asyncio.run(scenario())
    assert (answer.reset, answer.trailers) == (ENHANCE_YOUR_CALM, None)
    assert (ended, streams, tasks) == (["gone"], 0, 0)


def test_a_flooding_stream_that_then_goes_quiet_is_reset_and_its_call_ends() -> None:
    """The flood above, but the client stops sending as soon as the stream is over the limit and never returns
    window: the reset itself wakes the call waiting for the window, and it ends."""
    limit = 256 * 1024

    async def writes_first(stream: H2Stream) -> None:
        stream.send_head(200, HEAD)
        stream.send_data(bytes(200 * 1024))
        await stream.drain()

    async def scenario() -> tuple[int | None, int]:
        server, port = await started(writes_first, max_unread_bytes=limit)
        client = await Client.connect(port)
        stream_id = client.request("/x", bytes(limit + 1), end=False).stream_id
        await client.pump(lambda: client.answers[stream_id].done, take_answers=False)
        deadline = time.monotonic() + 2
        while server.tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        tasks = len(server.tasks)
        client.close()
        await server.stop(1)
        return client.answers[stream_id].reset, tasks

    assert asyncio.run(scenario()) == (ENHANCE_YOUR_CALM, 0)


def test_a_connection_whose_client_never_takes_its_last_answer_closes_after_the_idle_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a GOAWAY the last answer is still held back by a client that returns no window but keeps the
    connection busy (a PING every 0.1 s): the connection waits for it at most IDLE_SECONDS (0.3 s here), not
    until the stop's 10 s grace period ends."""
    monkeypatch.setattr(http2_server, "IDLE_SECONDS", 0.3)

    async def big(stream: H2Stream) -> None:
        stream.send_head(200, HEAD)
        stream.send_data(bytes(100_000))  # 34,465 bytes over the 64 KiB window: the call ends
        await stream.drain()
        stream.end(OK)

    async def scenario() -> tuple[bool, float]:
        server, port = await started(big)
        client = await Client.connect(port)
        client.request("/x", b"a")
        await asyncio.sleep(0.05)  # answered as far as the client's window lets it
        stopping = time.monotonic()
        stop = asyncio.ensure_future(server.stop(10))

        async def pings() -> None:
            while True:
                await asyncio.sleep(0.1)
                client.ping()

        pinging = asyncio.ensure_future(pings())
        await client.pump(lambda: client.closed, take_answers=False, pinged=True)
        pinging.cancel()
        await stop
        client.close()
        return client.closed, time.monotonic() - stopping

    closed, seconds = asyncio.run(scenario())
    assert closed
    assert 0.25 <= seconds < 3
