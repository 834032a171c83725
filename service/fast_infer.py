"""The V2 infer routes as a plain ASGI layer in front of FastAPI's whole middleware stack.

FastAPI's routing and dependency resolution cost more per request than everything else the service does for
a small model (route matching walks every route; the bearer guard is a dependency): about 170 µs; its
middleware layers (error, telemetry and body-limit middleware) cost about 7 µs more. Inference
requests — `POST /v2/models/{m}/infer` and `POST /v2/models/{m}/versions/{v}/infer` — are therefore answered
here, by the handler `handlers.infer_v2`, with the bearer check, body reading and error bodies of
`service.edge` that the FastAPI routes use too. Every other request passes through untouched. These routes are
described in /openapi.json by `service.openapi.add_infer_paths`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bnfold.service.access_log import AccessLog
from bnfold.service.auth import expected_token
from bnfold.service.body_limit import BodyLimits
from bnfold.service.dataplane import DataPlane
from bnfold.service.edge import ClientGone, Headers, Receive, check_bearer, error_response, read_body, response_headers
from bnfold.service.errors import MethodNotAllowedError
from bnfold.service.handlers import infer_v2
from bnfold.service.v2_request import BINARY_HEADER

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_BINARY_HEADER = BINARY_HEADER.lower().encode()


class FastInferMiddleware:
    """Answers V2 infer requests directly; passes everything else to the wrapped app."""

    def __init__(self, app: ASGIApp, plane: DataPlane, access: AccessLog | None = None) -> None:
        self.app = app
        self.plane = plane
        self.access = access
        self.body_limits = BodyLimits(plane)
        self.expected_token = expected_token(plane.settings.api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = INFER_PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            not_allowed = MethodNotAllowedError(f"method {scope['method']} is not allowed on {match[0]}")
            status, content, headers = error_response(not_allowed, match[0])
            headers.append((b"allow", b"POST"))
        else:
            try:
                status, content, headers = await self._infer(match, scope["headers"], receive)
            except ClientGone:
                return
        if self.access is not None:
            self.access.record(scope, status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _infer(
        self, match: re.Match[str], raw_headers: list[tuple[bytes, bytes]], receive: Receive
    ) -> tuple[int, bytes, Headers]:
        authorizations, declared, binary_header = [], "", None
        for name, value in raw_headers:
            name = name.lower()
            if name == b"authorization":
                authorizations.append(value.decode("latin-1"))
            elif name == b"content-length":
                declared = value.decode("latin-1")
            elif name == _BINARY_HEADER:
                binary_header = value.decode("latin-1")
        try:
            check_bearer(authorizations, self.expected_token)
            limit, fix = self.body_limits.limit(match[1], binary_header is not None)
            body = await read_body(receive, declared, limit, fix)
            content, json_length = await infer_v2(self.plane, match[1], match[2], body, binary_header)
        except ClientGone:
            raise
        except Exception as error:
            return error_response(error, f"POST {match[0]}")
        if json_length is None:
            return 200, content, response_headers(b"application/json", content)
        extra = [(_BINARY_HEADER, str(json_length).encode())]
        return 200, content, response_headers(b"application/octet-stream", content, extra)
