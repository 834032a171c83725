"""The gRPC floor: the cheapest possible ModelInfer on the gRPC server `bnfold serve` uses.

    python -m bench.grpc_floor --port 8001 --response FILE

grpcio's asyncio server on uvloop (as `bnfold serve` runs it, beside uvicorn), one generic unary handler with
no (de)serialisation: it ignores the request bytes and answers the bytes of FILE (a serialised
ModelInferResponse of the benchmarked model, so the answer is as long as bnfold's).
"""

from __future__ import annotations

import grpc
import uvloop

from bench.peer_servers.floor_cli import floor_arguments


async def serve(port: int, answer: bytes) -> None:
    async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(model_infer)  # no serializers: bytes in, bytes out
    service = grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler})
    server.add_generic_rpc_handlers((service,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    uvloop.run(serve(*floor_arguments(__doc__)))


if __name__ == "__main__":
    main()
