"""The gRPC floor of the HTTP/2 transport: the cheapest possible ModelInfer on the server `bnfold serve` runs its
gRPC port on by default (bnfold's HTTP/2 server on zttp, `Http2GrpcServer`, on uvloop).

    python -m bench.http2_grpc_floor --port 8001 --response FILE

The handler reads each call's body and answers the bytes of FILE (a serialised ModelInferResponse of the
benchmarked model, so the answer is as long as bnfold's) as one gRPC message with grpc-status 0;
ModelStreamInfer answers each whole message of the stream, as it arrives, with the ModelStreamInferResponse
wrapping those bytes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import uvloop
from tritonclient.grpc import service_pb2

from bench.peer_servers.floor_cli import floor_arguments
from bnfold.service.grpc_v2.http2_server import H2Stream, Http2GrpcServer

HEAD = [(b"content-type", b"application/grpc")]
OK = [(b"grpc-status", b"0")]


def framed(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def framed_answers(answer: bytes) -> tuple[bytes, bytes]:
    """The gRPC frames every floor answers: ModelInfer's (the serialised ModelInferResponse `answer`) and each
    ModelStreamInfer message's (the ModelStreamInferResponse wrapping it)."""
    wrapped = service_pb2.ModelStreamInferResponse(infer_response=service_pb2.ModelInferResponse.FromString(answer))
    return framed(answer), framed(wrapped.SerializeToString())


def floor_handler(answer: bytes) -> Callable[[H2Stream], Awaitable[None]]:
    unary, streamed = framed_answers(answer)

    async def handler(stream: H2Stream) -> None:
        if stream.path.endswith("/ModelStreamInfer"):
            stream.send_head(200, HEAD)
            pending = b""
            while stream.more or stream.body:
                pending += await stream.receive()
                while len(pending) >= 5 and len(pending) >= 5 + (end := int.from_bytes(pending[1:5], "big")):
                    pending = pending[5 + end :]
                    stream.send_data(streamed)
                    await stream.drain()
            stream.end(OK)
        else:
            while stream.more or stream.body:
                await stream.receive()
            stream.answer(200, HEAD, unary, OK)

    return handler


async def serve(port: int, answer: bytes) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=2048)
    server = Http2GrpcServer(floor_handler(answer), listener, graceful_shutdown_s=1, max_unread_bytes=64 << 20)
    await server.start()
    await asyncio.Event().wait()  # until the process is stopped


def main() -> None:
    uvloop.run(serve(*floor_arguments(__doc__)))


if __name__ == "__main__":
    main()
