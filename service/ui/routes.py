"""The /ui routes: dashboard, fold report pages, login, and the small JSON endpoints the dashboard calls.

GET  /ui                          the dashboard (login form instead, 401, when a key is set and not given)
GET  /ui/models/{m}/report        the fold report page of model m (as `bnfold inspect --html` writes it)
GET  /ui/login, POST /ui/login    the login form; POST /ui/logout forgets the session (access.py)
GET  /ui/api/summary              every model's state and live figures (summary.py), polled by the dashboard
GET  /ui/api/models/{m}/sample    one sample of m's calibration batch (?index=i), to prefill the input editor
POST /ui/api/predict              the /predict handler itself, behind the UI's cookie (the "try it" panel)

Every request is counted in `bnfold_ui_requests_total{route, status}`, never in the inference counters
(except /ui/api/predict, which runs the models and is counted as the /predict request it is).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from prometheus_client import Counter

from bnfold.service.dataplane import DataPlane
from bnfold.service.edge import read_body
from bnfold.service.errors import BadRequestError, NotReadyError, ServiceError, UnauthorizedError
from bnfold.service.handlers import predict
from bnfold.service.routes import json_response
from bnfold.service.ui.access import UiAccess
from bnfold.service.ui.pages import dashboard_page, login_page, served_report_page
from bnfold.service.ui.summary import dashboard_summary
from bnfold.service.ui.traffic import TrafficWindow

Handler = Callable[..., Awaitable[Response]]
UNAUTHORIZED = "missing or wrong API key; log in at /ui/login or send 'Authorization: Bearer <BNFOLD_API_KEY>'"


def ui_router(plane: DataPlane) -> APIRouter:
    """The router of every /ui route, counting its requests apart from inference."""
    router, access, traffic = (
        APIRouter(include_in_schema=False),
        UiAccess(plane.settings.api_key),
        TrafficWindow(plane.metrics),
    )
    requests = Counter(
        "bnfold_ui_requests", "Dashboard and report page requests (not inference)", ("route", "status"),
        registry=plane.metrics.registry,
    )  # fmt: skip

    def counted(route: str, page: bool = False) -> Callable[[Handler], Handler]:
        """Count the request by route and status; refuse it (login page or 401 JSON) without access."""

        def decorate(handler: Handler) -> Handler:
            @functools.wraps(handler)
            async def wrapper(request: Request, **kwargs: str) -> Response:
                try:
                    if not access.allows(request):
                        if page:
                            return _count(requests, route, login_page(request.url.path, "", 401))
                        raise UnauthorizedError(UNAUTHORIZED)
                    return _count(requests, route, await handler(request, **kwargs))
                except ServiceError as error:
                    requests.labels(route, str(error.status)).inc()
                    raise

            return wrapper

        return decorate

    _page_routes(router, plane, access, counted)
    _api_routes(router, plane, traffic, counted)
    _login_routes(router, access, requests)
    return router


def _count(requests: Counter, route: str, response: Response) -> Response:
    requests.labels(route, str(response.status_code)).inc()
    return response


Counted = Callable[..., Callable[[Handler], Handler]]


def _page_routes(router: APIRouter, plane: DataPlane, access: UiAccess, counted: Counted) -> None:
    @router.get("/ui")
    @counted("/ui", page=True)
    async def dashboard(request: Request) -> Response:
        return HTMLResponse(dashboard_page(access.required))

    @router.get("/ui/models/{model}/report")
    @counted("/ui/models/{m}/report", page=True)
    async def report(request: Request, model: str) -> Response:
        served = plane.registry.get(model)
        return HTMLResponse(served_report_page(served, plane.settings.repository / served.name))


def _api_routes(router: APIRouter, plane: DataPlane, traffic: TrafficWindow, counted: Counted) -> None:
    @router.get("/ui/api/summary")
    @counted("/ui/api/summary")
    async def summary(request: Request) -> Response:
        return json_response(dashboard_summary(plane, traffic))

    @router.get("/ui/api/models/{model}/sample")
    @counted("/ui/api/models/{m}/sample")
    async def sample(request: Request, model: str) -> Response:
        served = plane.registry.get(model)
        manifest = served.require_ready()
        index_text = request.query_params.get("index", "0")
        if not index_text.isdigit():
            raise BadRequestError(f"'index' is {index_text!r}; give a sample number, like ?index=0")
        path = plane.settings.repository / served.name / manifest.calibration.file
        with np.load(path, allow_pickle=False) as archive:
            arrays = {spec.name: archive[spec.name] for spec in manifest.inputs}
        count = min(len(array) for array in arrays.values())
        if count == 0:
            raise NotReadyError(f"the calibration batch of model {model!r} is empty")
        index = int(index_text) % count
        inputs = {name: array[index : index + 1].tolist() for name, array in arrays.items()}
        return json_response({"model": served.name, "index": index, "count": count, "inputs": inputs})

    @router.post("/ui/api/predict")
    @counted("/ui/api/predict")
    async def try_predict(request: Request) -> Response:
        return json_response(await predict(plane, await _body(request, plane.settings.max_body_bytes)))


async def _body(request: Request, limit: int) -> bytes:
    """The request body through the HTTP edge's one reader (413 past `limit`)."""
    return await read_body(request.receive, request.headers.get("content-length", ""), limit)


def _login_routes(router: APIRouter, access: UiAccess, requests: Counter) -> None:
    @router.get("/ui/login")
    async def login_form(request: Request) -> Response:
        return _count(requests, "/ui/login", login_page(request.query_params.get("next", "/ui"), "", 200))

    @router.post("/ui/login")
    async def log_in(request: Request) -> Response:
        form = parse_qs((await _body(request, 16 * 1024)).decode("utf-8", "replace"))
        target = _safe_next(form.get("next", ["/ui"])[0])
        if not access.key_matches(form.get("key", [""])[0]):
            return _count(requests, "/ui/login", login_page(target, "That is not the service's API key.", 401))
        response = RedirectResponse(target, status_code=303)
        if access.required:
            access.log_in(response, request)
        return _count(requests, "/ui/login", response)

    @router.post("/ui/logout")
    async def log_out(request: Request) -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        access.log_out(response)
        return _count(requests, "/ui/logout", response)


def _safe_next(target: str) -> str:
    """Only a path of this UI (no other host, no scheme) may be the page to return to after logging in."""
    return target if target.startswith("/ui") and "//" not in target and "\\" not in target else "/ui"
