"""gRPC on bnfold's own HTTP/2 server (http2_server.py, on zttp), on the event loop: every request stream of the
gRPC port answered as a call of `inference.GRPCInferenceService`.

gRPC is HTTP/2 of a fixed shape: a POST to `/inference.GRPCInferenceService/<Method>` with
`content-type: application/grpc`; a body of length-prefixed messages (one byte "compressed" flag, four bytes
big-endian length, the protobuf bytes); an answer of 200, the same framing, and the trailers `grpc-status` (the
status code's number) and `grpc-message` (its message, percent-encoded). `GrpcOverHttp2` speaks that shape and
hands each call to the `InferenceServicer` the grpcio server runs — same bearer check, same status mapping, same
stream semantics (`streaming.answer_stream`) — through a `CallContext` with the three things the servicer asks
of grpc's context (`invocation_metadata`, `abort`, `write`).

Why: grpcio's server runs its own poller thread and hands every call across threads to the event loop, where it
contends for the GIL with everything else; a call on this path costs less than half the CPU (bench/peers.py).

The rules grpc enforces itself are kept here:
- a message over BNFOLD_MAX_BODY_BYTES (compressed or, after decompression, uncompressed) ends the call with
  RESOURCE_EXHAUSTED before it is parsed; more than BNFOLD_GRPC_MAX_CONCURRENT_RPCS calls and streams in progress
  refuse the next with RESOURCE_EXHAUSTED;
- `grpc-encoding` identity, gzip and deflate are read (answers are never compressed); another is UNIMPLEMENTED;
- `grpc-timeout` ends the call with DEADLINE_EXCEEDED when it passes;
- an unknown method is UNIMPLEMENTED; a request that is not gRPC (not a POST of application/grpc) gets HTTP 415.
Memory per call stays bounded: a stream's messages are read only while it has a free in-flight slot, and the
server stops reading a connection once a stream has 64 KiB unread; a call hands over its next answer only
while its stream's `drain` lets it. The server, its HTTP/2 protocol and those bounds are in http2_server.py.
"""

from __future__ import annotations

import asyncio
import base64
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from bnfold.service.edge import GLOBAL_LIMIT_FIX, ClientGone
from bnfold.service.errors import BadRequestError, PayloadTooLargeError, ServiceError
from bnfold.service.grpc_v2 import inference_pb2 as pb
from bnfold.service.grpc_v2.http2_server import H2Stream
from bnfold.service.grpc_v2.servicer import InferenceServicer

SERVICE_PREFIX = "/inference.GRPCInferenceService/"
FRAME_HEADER = 5
ACCEPTED_ENCODINGS = b"identity,deflate,gzip"
RESPONSE_HEADERS = [(b"content-type", b"application/grpc")]
ERROR_HEADERS = [*RESPONSE_HEADERS, (b"grpc-accept-encoding", ACCEPTED_ENCODINGS)]  # on a call that did not end OK
OK_TRAILERS = [(b"grpc-status", b"0")]
ZLIB_WINDOW = {"gzip": 31, "deflate": 15}  # zlib's wbits: gzip wrapper, zlib wrapper
TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
TIMEOUT_UNIT = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
NOT_GRPC = (
    b"this port serves gRPC (inference.GRPCInferenceService over HTTP/2); send gRPC calls here, or V2 HTTP/REST "
    b"requests to the HTTP port\n"
)
STOPPING = "the server stopped before the call ended; send it again"
GRPC_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


@dataclass(frozen=True)
class Rpc:
    """One method of the service: its request message class and whether the client streams."""

    request: type[ProtoMessage]
    client_streaming: bool


def service_methods() -> dict[str, Rpc]:
    """Every method of inference.GRPCInferenceService, from the compiled protocol."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    return {m.name: Rpc(getattr(pb, m.input_type.name), m.client_streaming) for m in service.methods}


class CallEnded(ServiceError):
    """The call ends with this status (raised by the transport: encoding, framing, deadline); a ServiceError, so
    the servicer answers it with its own code inside a stream too."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.grpc_code = code.name


def grpc_timeout(value: str) -> float:
    """Seconds of a `grpc-timeout` header (an integer of at most 8 digits and a unit, e.g. `100m`)."""
    match = TIMEOUT.fullmatch(value)
    if match is None:
        raise CallEnded(grpc.StatusCode.INVALID_ARGUMENT, f"grpc-timeout {value!r} is not <digits><H|M|S|m|u|n>")
    return int(match[1]) * TIMEOUT_UNIT[match[2]]


def trailers(code: grpc.StatusCode, details: str) -> list[tuple[bytes, bytes]]:
    """`grpc-status` and, when there is one, the percent-encoded `grpc-message`."""
    status = [(b"grpc-status", str(code.value[0]).encode())]
    if details:
        status.append((b"grpc-message", quote(details, safe=GRPC_MESSAGE_SAFE).encode("ascii")))
    return status


def frame(message: ProtoMessage) -> bytes:
    """One uncompressed length-prefixed message."""
    payload = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class MessageReader:
    """The messages of a request body, one at a time, as its chunks arrive (the framing of gRPC over HTTP/2)."""

    def __init__(self, stream: H2Stream, limit: int, encoding: str) -> None:
        self.stream, self.limit, self.encoding = stream, limit, encoding
        self.buffer = bytearray()

    async def next(self) -> bytes | None:
        """The next message's (decompressed) bytes, or None once the client has closed its side."""
        while True:
            if len(self.buffer) >= FRAME_HEADER:
                length = int.from_bytes(self.buffer[1:FRAME_HEADER], "big")
                if length > self.limit:
                    raise PayloadTooLargeError(self._too_large(f"{length} bytes"))
                end = FRAME_HEADER + length
                if len(self.buffer) >= end:
                    compressed, payload = self.buffer[0], bytes(self.buffer[FRAME_HEADER:end])
                    del self.buffer[:end]
                    return self._decompress(payload) if compressed else payload
            stream = self.stream
            if not stream.more and not stream.body:
                if self.buffer:
                    raise BadRequestError(f"the request body ends inside a message ({len(self.buffer)} bytes left)")
                return None
            self.buffer += await stream.receive()  # ClientGone once the client has reset the stream

    def _decompress(self, payload: bytes) -> bytes:
        window = ZLIB_WINDOW.get(self.encoding)
        if window is None:
            raise CallEnded(
                grpc.StatusCode.INTERNAL, "a message is flagged compressed but the call's grpc-encoding is identity"
            )
        inflater = zlib.decompressobj(window)
        try:
            data = inflater.decompress(payload, self.limit + 1)
        except zlib.error as error:
            raise BadRequestError(f"a {self.encoding} message does not decompress ({error})") from None
        if len(data) > self.limit:
            raise PayloadTooLargeError(self._too_large(f"more than {self.limit} bytes decompressed"))
        if not inflater.eof or inflater.unused_data:
            raise BadRequestError(f"a {self.encoding} message is truncated or has bytes after its end; send it whole")
        return data

    def _too_large(self, size: str) -> str:
        return f"a message of {size} is over the limit of {self.limit} bytes; {GLOBAL_LIMIT_FIX}"


class CallContext:
    """What the servicer uses of grpc's ServicerContext, for one call: its metadata, `abort` and `write`."""

    def __init__(self, stream: H2Stream, write: Callable[[ProtoMessage], Awaitable[None]]) -> None:
        self.stream = stream
        self.code, self.details = grpc.StatusCode.OK, ""
        self.write = write

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The call's custom metadata (as grpcio gives it: `-bin` values base64-decoded, pseudo-headers left out)."""
        pairs: list[tuple[str, str | bytes]] = []
        for raw_name, raw_value in self.stream.headers():
            name = raw_name.decode("latin-1")
            if name.startswith(":"):
                continue
            value: str | bytes = raw_value.decode("latin-1")
            if name.endswith("-bin"):
                value = base64.b64decode(raw_value + b"=" * (-len(raw_value) % 4))
            pairs.append((name, value))
        return tuple(pairs)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


class Call:
    """One gRPC call's answer on its stream: the head once, messages, then the status trailers; each message
    handed over only while the client takes them (`H2Stream.drain`)."""

    def __init__(self, stream: H2Stream) -> None:
        self.stream = stream
        self.started = False

    async def write(self, message: ProtoMessage) -> None:
        if self.stream.gone:
            raise ClientGone
        self._start()
        self.stream.send_data(frame(message))
        await self.stream.drain()

    async def answer(self, message: ProtoMessage) -> None:
        """A unary call's whole answer: head, the message, status OK (returns once the client takes it)."""
        self.started = True
        self.stream.answer(200, RESPONSE_HEADERS, frame(message), OK_TRAILERS)
        await self.stream.drain()

    def finish(self, code: grpc.StatusCode, details: str = "") -> None:
        if self.stream.gone or self.stream.ended:  # or answered, and waiting for the client to take the answer
            return
        self._start(RESPONSE_HEADERS if code == grpc.StatusCode.OK else ERROR_HEADERS)
        self.stream.end(trailers(code, details))

    def _start(self, headers: list[tuple[bytes, bytes]] = RESPONSE_HEADERS) -> None:
        if not self.started:
            self.started = True
            self.stream.send_head(200, headers)


class GrpcOverHttp2:
    """The handler of every request stream of the gRPC port: each call of inference.GRPCInferenceService
    answered by `servicer`."""

    def __init__(self, servicer: InferenceServicer, max_message_bytes: int, max_calls: int) -> None:
        self.methods = {
            SERVICE_PREFIX + name: (rpc, getattr(servicer, name)) for name, rpc in service_methods().items()
        }
        self.max_message_bytes, self.max_calls = max_message_bytes, max_calls
        self.calls = 0

    async def __call__(self, stream: H2Stream) -> None:
        content_type = stream.header(b"content-type") or b""
        if stream.method != b"POST" or not content_type.startswith(b"application/grpc"):
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(NOT_GRPC))]
            stream.answer(415, headers, b"" if stream.method == b"HEAD" else NOT_GRPC, None)
            return
        call = Call(stream)
        found = self.methods.get(stream.path)
        if found is None:
            message = f"{stream.path} is not a method of inference.GRPCInferenceService, the service on this port"
            call.finish(grpc.StatusCode.UNIMPLEMENTED, message)
            return
        if self.calls >= self.max_calls:
            message = (
                f"{self.calls} gRPC calls and streams are in progress, the most BNFOLD_GRPC_MAX_CONCURRENT_RPCS "
                "allows; retry later"
            )
            call.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            return
        self.calls += 1
        try:
            await self._serve(found, stream, call)
        finally:
            self.calls -= 1

    async def _serve(self, found: tuple[Rpc, Callable[..., Awaitable[Any]]], stream: H2Stream, call: Call) -> None:
        rpc, method = found
        context = CallContext(stream, call.write)
        try:
            encoding, deadline = _call_options(stream)
            reader = MessageReader(stream, self.max_message_bytes, encoding)
            if deadline is None:
                await _run(rpc, method, reader, context, call)
            else:
                async with asyncio.timeout(deadline):
                    await _run(rpc, method, reader, context, call)
        except grpc.aio.AbortError:
            call.finish(context.code, context.details)
        except ServiceError as error:  # the transport's own: size, encoding, framing (CallEnded and the like)
            call.finish(grpc.StatusCode[error.grpc_code], error.message)
        except TimeoutError:
            call.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        except ClientGone:
            pass  # the stream is gone: nobody is left to answer
        except asyncio.CancelledError:  # the server is stopping: its grace period is over, or a batch under
            # this call was cancelled. The call ends here, answered: nothing is left to cancel above this task's
            # own call, and letting the cancellation go on would reset the stream instead of answering it.
            call.finish(grpc.StatusCode.UNAVAILABLE, STOPPING)


async def _run(
    rpc: Rpc, method: Callable[..., Awaitable[Any]], reader: MessageReader, context: CallContext, call: Call
) -> None:
    if rpc.client_streaming:
        await method(_requests(reader, rpc.request), context)
        call.finish(grpc.StatusCode.OK)
    else:
        request = await _only_message(reader, rpc.request)
        await call.answer(await method(request, context))


def _call_options(stream: H2Stream) -> tuple[str, float | None]:
    """The call's message encoding (identity unless grpc-encoding says gzip or deflate) and its deadline in
    seconds from grpc-timeout (None: none); CallEnded for an encoding not served or a malformed timeout."""
    encoding, timeout = stream.header(b"grpc-encoding"), stream.header(b"grpc-timeout")
    name = "identity" if encoding is None else encoding.decode("latin-1").strip()
    if name != "identity" and name not in ZLIB_WINDOW:
        message = f"grpc-encoding {name!r} is not supported; send identity, gzip or deflate"
        raise CallEnded(grpc.StatusCode.UNIMPLEMENTED, message)
    return name, None if timeout is None else grpc_timeout(timeout.decode("latin-1"))


async def _only_message(reader: MessageReader, request: type[ProtoMessage]) -> ProtoMessage:
    data = await reader.next()
    if data is None or await reader.next() is not None:
        name = request.DESCRIPTOR.name
        raise BadRequestError(f"a unary call carries exactly one {name}; send one message")
    return _parse(request, data)


def _parse(request: type[ProtoMessage], data: bytes) -> ProtoMessage:
    try:
        return request.FromString(data)
    except DecodeError as error:
        raise BadRequestError(f"the message is not a {request.DESCRIPTOR.name} ({error})") from None


async def _requests(reader: MessageReader, request: type[ProtoMessage]) -> AsyncIterator[ProtoMessage]:
    """A stream's requests as they arrive; DecodeError for a message that is not one (answer_stream's rule);
    the client's going away ends the call (grpc's CANCELLED, which nobody receives)."""
    while True:
        try:
            data = await reader.next()
        except ClientGone:
            raise grpc.aio.AbortError() from None  # answered by nothing: the stream is gone
        if data is None:
            return
        yield request.FromString(data)
