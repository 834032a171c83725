"""HTTP routes: translate requests into data-plane calls and results into responses. No logic of their own.

Public (no token): /v2/health/live, /v2/health/ready, /v2/models/{m}[/versions/{v}]/ready, /metrics.
Protected when BNFOLD_API_KEY is set: everything else.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from bnfold.service import metadata
from bnfold.service.auth import Guard
from bnfold.service.dataplane import DataPlane
from bnfold.service.errors import NotReadyError, PayloadTooLargeError
from bnfold.service.handlers import infer_v2, predict
from bnfold.service.openapi import INFER_BODY, INFER_RESPONSES, PREDICT_BODY, PREDICT_RESPONSES
from bnfold.service.v2_response import encode_json

JSON = "application/json"


def json_response(document: Any, status: int = 200) -> Response:
    return Response(encode_json(document), status_code=status, media_type=JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body of {size} bytes or more is over the limit of {limit} bytes; send a smaller batch "
        "or raise BNFOLD_MAX_BODY_BYTES"
    )


def public_router(plane: DataPlane) -> APIRouter:
    router = APIRouter()

    @router.get("/v2/health/live")
    async def live() -> Response:
        return json_response({"live": True})

    @router.get("/v2/health/ready")
    async def ready() -> Response:
        if not plane.registry.loaded:
            raise NotReadyError("server is still loading models; retry shortly")
        return json_response({"ready": True})

    @router.get("/v2/models/{model}/ready")
    @router.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str | None = None) -> Response:
        served = plane.registry.get(model)
        if not served.version_ready(version):
            served.require_ready()
            raise NotReadyError(f"version 'folded' of model {model!r} is degraded: {served.folded_degraded}")
        return json_response({"name": model, "ready": True})

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(plane.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return router


def protected_router(plane: DataPlane, guard: Guard) -> APIRouter:
    router = APIRouter(dependencies=[Depends(guard)])
    _add_metadata_routes(router, plane)
    limit = plane.settings.max_body_bytes

    # Normally answered by service.fast_infer before routing; kept for the OpenAPI schema and as a fallback.
    @router.post("/v2/models/{model}/versions/{version}/infer", openapi_extra=INFER_BODY, responses=INFER_RESPONSES)
    async def infer_version(model: str, version: str, request: Request) -> Response:
        return await _infer(model, version, request)

    @router.post("/v2/models/{model}/infer", openapi_extra=INFER_BODY, responses=INFER_RESPONSES)
    async def infer(model: str, request: Request) -> Response:
        return await _infer(model, None, request)

    async def _infer(model: str, version: str | None, request: Request) -> Response:
        body = await read_body(request, limit)
        header = request.headers.get("inference-header-content-length")
        content, json_length = await infer_v2(plane, model, version, body, header)
        if json_length is None:
            return Response(content, media_type=JSON)
        headers = {"Inference-Header-Content-Length": str(json_length)}
        return Response(content, media_type="application/octet-stream", headers=headers)

    @router.post("/predict", openapi_extra=PREDICT_BODY, responses=PREDICT_RESPONSES)
    async def predict_route(request: Request) -> Response:
        return json_response(await predict(plane, await read_body(request, limit)))

    return router


def _add_metadata_routes(router: APIRouter, plane: DataPlane) -> None:
    @router.get("/v2")
    async def server_metadata() -> Response:
        return json_response(metadata.server_metadata())

    @router.get("/v2/models")
    async def model_index() -> Response:
        models = [{"name": m.name, "state": m.state, "reason": m.reason} for m in plane.registry.models.values()]
        return json_response({"models": models})

    @router.get("/v2/models/{model}")
    @router.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(model: str, version: str | None = None) -> Response:
        served = plane.registry.get(model)
        served.check_version(version)
        return json_response(metadata.model_metadata(served))

    @router.get("/v2/models/{model}/config")
    async def model_config(model: str) -> Response:
        return json_response(metadata.model_config(plane.registry.get(model), plane.settings.max_batch_size))
