"""The gRPC floor on the other Python gRPC server: grpclib (asyncio, HTTP/2 by the pure-Python `h2`), on uvloop.

    <grpclib-venv>/bin/python bench/peer_servers/grpclib_floor.py --port 8001 --response FILE

Run in its own virtualenv (bench.peer_envs). As bench.grpc_floor does on grpcio: one unary ModelInfer handler
with no (de)serialisation (a codec that passes bytes through) ignores the request and answers the bytes of FILE.
Run as a script, so `floor_cli` (standard library only) is imported from this folder.
"""

from __future__ import annotations

from typing import Any

import uvloop
from floor_cli import floor_arguments
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.server import Server, Stream

INFER = "/inference.GRPCInferenceService/ModelInfer"


class RawBytes(CodecBase):
    """Messages as the bytes on the wire (content type application/grpc+proto, as clients send)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


class FixedAnswer:
    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    async def model_infer(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        await stream.send_message(self.answer)

    def __mapping__(self) -> dict[str, Handler]:
        return {INFER: Handler(self.model_infer, Cardinality.UNARY_UNARY, bytes, bytes)}


async def serve(port: int, answer: bytes) -> None:
    server = Server([FixedAnswer(answer)], codec=RawBytes())
    await server.start("127.0.0.1", port)
    await server.wait_closed()


def main() -> None:
    uvloop.run(serve(*floor_arguments(__doc__)))


if __name__ == "__main__":
    main()
