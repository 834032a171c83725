"""HTTP routes: translate requests into data-plane calls and results into responses. No logic of their own.

Public (no token): /v2/health/live, /v2/health/ready, /v2/models/{m}[/versions/{v}]/ready, /metrics.
Protected when BNFOLD_API_KEY is set: everything else. The V2 infer routes are answered by `service.fast_infer`
before routing, so they are not registered here (`service.openapi` describes them).

A public answer says ready or not and nothing more: without the token, a model's ready route names neither the
other models nor why a model is not ready (paths, hashes); those go to the log and to authenticated callers.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from bnfold.service import metadata
from bnfold.service.auth import Guard, is_authenticated
from bnfold.service.dataplane import DataPlane
from bnfold.service.edge import read_body
from bnfold.service.errors import NotFoundError, NotReadyError, ServiceError
from bnfold.service.handlers import predict
from bnfold.service.openapi import PREDICT_BODY, PREDICT_RESPONSES
from bnfold.service.v2_response import encode_json

JSON = "application/json"
log = logging.getLogger("bnfold.service")


def json_response(document: Any, status: int = 200) -> Response:
    return Response(encode_json(document), status_code=status, media_type=JSON)


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
    async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
        try:
            _require_version_ready(plane, model, version)
        except ServiceError as error:
            if is_authenticated(request, plane.settings.api_key):
                raise
            log.info("public ready check of model %r: %s", model, error.message)
            raise _public(error, model) from None
        return json_response({"name": model, "ready": True})

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(plane.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return router


def _require_version_ready(plane: DataPlane, model: str, version: str | None) -> None:
    served = plane.registry.get(model)
    if not served.version_ready(version):
        served.require_ready()
        raise NotReadyError(f"version 'folded' of model {model!r} is degraded: {served.folded_degraded}")


def _public(error: ServiceError, model: str) -> ServiceError:
    """The same status with a message that says not ready and nothing more."""
    kind = NotFoundError if isinstance(error, NotFoundError) else NotReadyError
    return kind(f"model {model!r} is not ready; the reason is shown with the bearer token and in the server log")


def protected_router(plane: DataPlane, guard: Guard) -> APIRouter:
    router = APIRouter(dependencies=[Depends(guard)])
    _add_metadata_routes(router, plane)
    limit = plane.settings.max_body_bytes

    @router.post("/predict", openapi_extra=PREDICT_BODY, responses=PREDICT_RESPONSES)
    async def predict_route(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        return json_response(await predict(plane, await read_body(request.receive, declared, limit)))

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

    @router.get("/v2/models/{model}/stats")
    async def model_stats(model: str) -> Response:
        return json_response(metadata.model_stats(plane.registry.get(model)))
