"""The gRPC floor: the cheapest possible ModelInfer on the gRPC server `bnfold serve` uses.

    python -m bench.grpc_floor --port 8001 --response FILE

grpcio's asyncio server on uvloop (as `bnfold serve` runs it, beside uvicorn), generic handlers with no
(de)serialisation: ModelInfer ignores the request bytes and answers the bytes of FILE (a serialised
ModelInferResponse of the benchmarked model, so the answer is as long as bnfold's); ModelStreamInfer answers
each request of the stream with the ModelStreamInferResponse wrapping those bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import uvloop
from tritonclient.grpc import service_pb2

from bench.peer_servers.floor_cli import floor_arguments


async def serve(port: int, answer: bytes) -> None:
    streamed = service_pb2.ModelStreamInferResponse(
        infer_response=service_pb2.ModelInferResponse.FromString(answer)
    ).SerializeToString()

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    async def model_stream_infer(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield streamed

    server = grpc.aio.server()
    handlers = {  # no serializers: bytes in, bytes out
        "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(model_stream_infer),
    }
    service = grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)
    server.add_generic_rpc_handlers((service,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    uvloop.run(serve(*floor_arguments(__doc__)))


if __name__ == "__main__":
    main()
