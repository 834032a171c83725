"""HTTP routes of the model-repository and statistics extensions (Triton's shapes), behind the bearer guard.

    POST /v2/repository/index                  [{name, version?, state, reason}, ...]  body {"ready": bool}?
    POST /v2/repository/models/{m}/load        200 {"name", "state": "READY"}; 400 {"error": reason}
    POST /v2/repository/models/{m}/unload      200 {"name", "state": "UNAVAILABLE"}; 404 unknown model
    GET  /v2/models[/{m}[/versions/{v}]]/stats {"model_stats": [...], "bnfold": {m: agreement figures}}

The reasons an index gives (file paths, digests) are for authenticated callers only: with BNFOLD_API_KEY
set, every route here requires the token. The work is done by service.control and service.metadata.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from bnfold.service import metadata
from bnfold.service.auth import Guard
from bnfold.service.control import RepositoryControl, check_load_parameters
from bnfold.service.edge import read_route_body
from bnfold.service.errors import BadRequestError
from bnfold.service.routes import json_response

# Small JSON bodies only; a repository request carries at most a few parameters.
CONTROL_BODY_LIMIT = 64 * 1024


async def _json_object(request: Request, route: str) -> dict[str, Any]:
    """The body as a JSON object ({} when empty); BadRequestError naming the route otherwise."""
    body = await read_route_body(request.receive, request.headers.get("content-length", ""), CONTROL_BODY_LIMIT)
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequestError(f"body of {route} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadRequestError(f"body of {route} must be a JSON object, got {type(document).__name__}")
    return document


def _parameters(document: dict[str, Any], route: str) -> dict[str, Any]:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequestError(f"'parameters' of {route} must be an object, got {type(parameters).__name__}")
    return parameters


def extension_router(control: RepositoryControl, guard: Guard) -> APIRouter:
    router = APIRouter(dependencies=[Depends(guard)])
    registry = control.registry

    @router.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        document = await _json_object(request, "POST /v2/repository/index")
        ready = document.get("ready", False)
        if not isinstance(ready, bool):
            raise BadRequestError(f"'ready' must be true or false, got {ready!r}")
        return json_response([entry.to_json() for entry in control.index(ready_only=ready)])

    @router.post("/v2/repository/models/{model}/load")
    async def repository_load(model: str, request: Request) -> Response:
        route = f"POST /v2/repository/models/{model}/load"
        parameters = _parameters(await _json_object(request, route), route)
        check_load_parameters(parameters)
        await control.load(model)
        return json_response({"name": model, "state": "READY"})

    @router.post("/v2/repository/models/{model}/unload")
    async def repository_unload(model: str, request: Request) -> Response:
        route = f"POST /v2/repository/models/{model}/unload"
        _parameters(await _json_object(request, route), route)  # unload_dependents: no ensembles here
        await control.unload(model)
        return json_response({"name": model, "state": "UNAVAILABLE"})

    @router.get("/v2/models/stats")
    async def all_stats() -> Response:
        return json_response(metadata.model_statistics(list(registry.models.values())))

    @router.get("/v2/models/{model}/stats")
    @router.get("/v2/models/{model}/versions/{version}/stats")
    async def model_stats(model: str, version: str | None = None) -> Response:
        served = registry.get(model)
        served.check_version(version)
        return json_response(metadata.model_statistics([served], version))

    return router
