"""The closed-loop load generator of bench.http_load over gRPC: one HTTP/2 channel per in-flight request.

Each worker sends the same pre-serialised ModelInferRequest (raw_input_contents, as tritonclient sends it) on
its own channel and waits for the whole response; the response is not decoded (bytes in, bytes out), as the
HTTP generator parses only the status line. Windows, stability rule and CPU accounting are http_load's.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from bench.http_load import Measurement, Target, _Recorder, measure

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def infer_request(model: str, inputs: dict[str, np.ndarray], datatypes: dict[str, str]) -> bytes:
    """A serialised ModelInferRequest carrying every input as raw contents (tritonclient's default)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=datatypes[name], shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request.SerializeToString()


async def _grpc_worker(target: Target, recorder: _Recorder) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{target.port}") as channel:
        call = channel.unary_unary(INFER)  # no serializers: bytes in, bytes out
        try:
            while recorder.running:
                start = time.perf_counter()
                try:
                    await call(target.request)
                except grpc.aio.AioRpcError:
                    recorder.errors += 1
                recorder.latencies.append(time.perf_counter() - start)
        except Exception as error:  # reported by http_load's summary, like a dead HTTP connection
            recorder.failure = recorder.failure or repr(error)


def measure_grpc(target: Target, concurrency: int, window_s: float = 1.0, max_windows: int = 8) -> Measurement:
    """http_load.measure with gRPC workers (target.port is the gRPC port)."""
    return measure(target, concurrency, window_s, max_windows, worker=_grpc_worker)


def infer_once(port: int, request: bytes) -> service_pb2.ModelInferResponse:
    """One request on a fresh channel, decoded; for checking answers before measuring."""

    async def once() -> bytes:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return bytes(await channel.unary_unary(INFER)(request))

    return service_pb2.ModelInferResponse.FromString(asyncio.run(once()))


def stream_once(port: int, request: bytes) -> service_pb2.ModelStreamInferResponse:
    """One request on a ModelStreamInfer stream of its own, its one answer decoded; for checking answers."""

    async def once() -> list[bytes]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(STREAM_INFER)(iter([request]))
            return [bytes(answer) async for answer in call]

    (answer,) = asyncio.run(once())
    return service_pb2.ModelStreamInferResponse.FromString(answer)
