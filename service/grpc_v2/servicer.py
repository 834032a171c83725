"""The RPCs of `inference.GRPCInferenceService`, over the same data plane, handler and errors as HTTP.

Each RPC translates its message into the calls the HTTP routes make (`handlers.run_v2`, `metadata.*`, the
registry) and the answer back; a `ServiceError` becomes its `grpc_code` with the HTTP message, anything
unexpected INTERNAL (logged with its traceback). With BNFOLD_API_KEY set every RPC except ServerLive,
ServerReady and ModelReady needs the metadata `authorization: Bearer <key>` (`edge.check_bearer`, the
check HTTP uses).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from bnfold.service import metadata
from bnfold.service.auth import expected_token
from bnfold.service.control import RepositoryControl, check_load_parameters
from bnfold.service.dataplane import DataPlane
from bnfold.service.edge import check_bearer
from bnfold.service.errors import ServiceError
from bnfold.service.grpc_v2 import inference_pb2 as pb
from bnfold.service.grpc_v2.inference_pb2_grpc import GRPCInferenceServiceServicer
from bnfold.service.grpc_v2.streaming import answer_stream
from bnfold.service.grpc_v2.tensors import infer_response, request_document
from bnfold.service.handlers import run_v2
from bnfold.service.model import ServedModel

log = logging.getLogger("bnfold.service")
Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def rpc(public: bool = False) -> Callable[[Method[Request, Response]], Method[Request, Response]]:
    """Wrap an RPC: bearer check (unless `public`), then ServiceError -> its gRPC status with the message."""

    def wrap(method: Method[Request, Response]) -> Method[Request, Response]:
        @functools.wraps(method)
        async def answer(self: InferenceServicer, request: Request, context: grpc.aio.ServicerContext) -> Response:
            try:
                if not public and self.token is not None:
                    check_bearer(_authorizations(context), self.token)
                return await method(self, request, context)
            except ServiceError as error:
                await context.abort(grpc.StatusCode[error.grpc_code], error.message)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                log.exception("unexpected error in gRPC %s", method.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, _internal_message(error))
            raise AssertionError("context.abort returned")  # abort always raises

        return answer

    return wrap


def _unexpected(request: pb.ModelInferRequest, error: Exception) -> str:
    """Log an unexpected error of one streamed request (with its model and id); the message its answer carries."""
    log.error(
        "unexpected error in gRPC ModelStreamInfer (model %r, request id %r)",
        request.model_name,
        request.id,
        exc_info=error,
    )
    return _internal_message(error)


def _internal_message(error: Exception) -> str:
    return f"internal error ({type(error).__name__}); see the server log"


def _authorizations(context: grpc.aio.ServicerContext) -> list[str]:
    """Every `authorization` metadata value (several are refused, as several HTTP headers are)."""
    return [
        value for key, value in context.invocation_metadata() or () if key == "authorization" and isinstance(value, str)
    ]


class InferenceServicer(GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService` on a data plane (the one the HTTP app serves)."""

    def __init__(self, plane: DataPlane, control: RepositoryControl, counts_calls: bool = True) -> None:
        """`counts_calls`: count ModelInfer calls in `plane.grpc_calls` while they run (what tells a request it
        is alone); off when the server's own set of call tasks is `plane.grpc_requests` (the HTTP/2 server), where
        a stream's task is discounted instead. Every request of a stream is counted on either."""
        self.plane, self.control = plane, control
        self.counts_calls = counts_calls
        self.token = expected_token(plane.settings.api_key)

    @rpc(public=True)
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc(public=True)
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.registry.loaded)

    @rpc(public=True)
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        model = self.plane.registry.get(request.name)
        return pb.ModelReadyResponse(ready=model.version_ready(request.version or None))

    @rpc()
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**metadata.server_metadata())

    @rpc()
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        document = metadata.model_metadata(self._model(request.name, request.version))
        tensors = {
            key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in document[key]] for key in ("inputs", "outputs")
        }
        return pb.ModelMetadataResponse(
            name=document["name"], versions=document["versions"], platform=document["platform"], **tensors
        )

    @rpc()
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        model = self._model(request.name, request.version)
        document = metadata.model_config(model, self.plane.settings.max_batch_size)
        config = pb.ModelConfig(
            name=document["name"],
            platform=document["platform"],
            max_batch_size=document["max_batch_size"],
            input=[pb.ModelInput(name=t["name"], data_type=t["data_type"], dims=t["dims"]) for t in document["input"]],
            output=[
                pb.ModelOutput(name=t["name"], data_type=t["data_type"], dims=t["dims"]) for t in document["output"]
            ],
        )
        return pb.ModelConfigResponse(config=config)

    @rpc()
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await self._infer(request, self.counts_calls)

    @rpc()
    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest], context: Any) -> None:
        """Every request of the stream answered on it (`streaming.answer_stream`); the bearer is checked once,
        when the stream opens."""
        in_flight = self.plane.settings.grpc_stream_in_flight
        stream_task = 0 if self.counts_calls else 1  # the stream's own task is in plane.grpc_requests: not a request
        self.plane.grpc_stream_tasks += stream_task
        try:
            await answer_stream(
                requests, lambda request: self._infer(request, True), context.write, _unexpected, in_flight
            )
        finally:
            self.plane.grpc_stream_tasks -= stream_task

    async def _infer(self, request: pb.ModelInferRequest, counted: bool) -> pb.ModelInferResponse:
        """One inference; `counted`: it is in `plane.grpc_calls` while it runs (a streamed request always is)."""
        raw = len(request.raw_input_contents) > 0

        def respond(header: dict[str, Any], outputs: Any, wanted: Any) -> pb.ModelInferResponse:
            return infer_response(header, outputs, wanted, raw)

        version = request.model_version or None
        self.plane.grpc_calls += counted
        try:
            return await run_v2(
                self.plane, request.model_name, version, lambda: request_document(request), raw, respond
            )
        finally:
            self.plane.grpc_calls -= counted

    def _model(self, name: str, version: str) -> ServedModel:
        model = self.plane.registry.get(name)
        model.check_version(version or None)
        return model

    @rpc()
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        """Triton's statistics, as GET /v2/models[/{m}[/versions/{v}]]/stats (bnfold's agreement figures are in
        that HTTP answer only: the protocol's message has no field for them)."""
        if request.name:
            document = metadata.model_statistics([self._model(request.name, request.version)], request.version or None)
        else:
            document = metadata.model_statistics(list(self.plane.registry.models.values()))
        return json_format.ParseDict({"model_stats": document["model_stats"]}, pb.ModelStatisticsResponse())

    # ---- The model repository extension: the same RepositoryControl as POST /v2/repository/… ---------------

    @rpc()
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        rows = self.control.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=row.name, version=row.version or "", state=row.state, reason=row.reason
                )
                for row in rows
            ]
        )

    @rpc()
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        check_load_parameters(request.parameters.keys())
        await self.control.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @rpc()
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.control.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()
