"""The app factory: `create_app(settings)` wires registry, data plane, metrics, routes and error handlers.

Models load in the lifespan, each in a thread of its own (service.control): the server is live at once and
ready (GET /v2/health/ready → 200) when the startup loading ends; then, with BNFOLD_REPOSITORY_POLL_SECONDS
set, the repository is polled for new, changed and removed entries. Every error response is
{"error": "<message>"}.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from bnfold.service.access_log import AccessLog, AccessLogMiddleware
from bnfold.service.api_docs import add_api_docs
from bnfold.service.auth import bearer_guard
from bnfold.service.control import RepositoryControl
from bnfold.service.dataplane import DataPlane
from bnfold.service.edge import error_response
from bnfold.service.errors import BadRequestError, ServiceError
from bnfold.service.extension_routes import extension_router
from bnfold.service.fast_infer import FastInferMiddleware
from bnfold.service.metadata import SERVER_VERSION
from bnfold.service.metrics import ServiceMetrics
from bnfold.service.model import Registry
from bnfold.service.openapi import add_infer_paths
from bnfold.service.repository import discover
from bnfold.service.routes import json_response, protected_router, public_router
from bnfold.service.settings import Settings
from bnfold.service.ui.routes import ui_router

log = logging.getLogger("bnfold.service")


class ServiceApp(FastAPI):
    """FastAPI behind the V2 infer fast path (service.fast_infer), which answers infer requests before FastAPI's
    own `__call__` (its telemetry checks read the environment on every request) and middleware stack; the
    access log (service.access_log) covers every request."""

    def __init__(self, plane: DataPlane, access: AccessLog | None, **options: Any) -> None:
        super().__init__(**options)
        self.plane = plane
        routed: ASGIApp = super().__call__
        if access is not None:
            routed = AccessLogMiddleware(routed, access)
        self._edge = FastInferMiddleware(routed, plane, access)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._edge(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    """A FastAPI app serving the repository of `settings`; nothing is loaded until its lifespan starts."""
    metrics = ServiceMetrics()
    plane = DataPlane(Registry(discover(settings.repository)), settings, metrics)
    control = RepositoryControl(plane)
    access = AccessLog() if settings.access_log and settings.log_level in ("debug", "info") else None
    app = ServiceApp(
        plane,
        access,
        title="bnfold inference service",
        version=SERVER_VERSION,
        lifespan=partial(_lifespan, control=control, access=access),
        docs_url=None,
        redoc_url=None,
    )
    app.state.plane = plane
    app.state.control = control
    guard = bearer_guard(settings.api_key)
    app.include_router(public_router(plane))
    app.include_router(extension_router(control, guard))  # before /v2/models/{model}: /v2/models/stats
    app.include_router(protected_router(plane, guard))
    add_api_docs(app)  # /docs: Swagger UI from local assets (public, like /openapi.json)
    app.include_router(ui_router(plane))  # /ui pages: their own key check (cookie or bearer), own counter
    _add_error_handlers(app)
    _describe_infer_routes(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI, control: RepositoryControl, access: AccessLog | None) -> AsyncIterator[None]:
    task = asyncio.create_task(_serve_repository(control))
    yield
    task.cancel()
    if access is not None:
        access.flush()


async def _serve_repository(control: RepositoryControl) -> None:
    """Load what the repository holds, then (if enabled) keep polling it. What loading allocated (sessions'
    Python objects, manifests, arrays) is moved out of the garbage collector's generations (gc.freeze): it
    lives as long as the server, and full collections no longer walk it between requests."""
    await control.startup()
    gc.freeze()
    seconds = control.plane.settings.repository_poll_seconds
    if seconds > 0:
        await control.poll_forever(seconds)


def _add_error_handlers(app: FastAPI) -> None:
    async def service_error(request: Request, error: Exception) -> Response:
        return _error(error, request)

    async def http_error(request: Request, error: Exception) -> Response:
        if not isinstance(error, HTTPException):
            raise error
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}; the endpoints are listed in docs/service.md"
        elif error.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        return json_response({"error": message}, error.status_code)

    async def validation_error(request: Request, error: Exception) -> Response:
        return _error(BadRequestError(f"invalid request to {request.url.path}: {error}"), request)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, service_error)


def _error(error: Exception, request: Request) -> Response:
    """The shared error mapping of service.edge, as a FastAPI response."""
    status, content, headers = error_response(error, f"{request.method} {request.url.path}")
    return Response(content, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


def _describe_infer_routes(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return add_infer_paths(generate())

    app.openapi = openapi  # type: ignore[method-assign]
