"""The V2 infer routes as a plain ASGI layer in front of FastAPI's router: the request path of issue 6.

FastAPI's routing and dependency resolution cost more per request than everything else the service does for
a small model (route matching walks every route; the bearer guard is a dependency). Inference requests —
`POST /v2/models/{m}/infer` and `POST /v2/models/{m}/versions/{v}/infer` — are therefore answered here, with
the same handler (`handlers.infer_v2`), the same bearer check, body limit, error bodies and statuses as the
FastAPI routes, which stay registered for the OpenAPI schema. Every other request passes through untouched.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bnfold.service.dataplane import DataPlane
from bnfold.service.errors import ServiceError, UnauthorizedError
from bnfold.service.handlers import infer_v2
from bnfold.service.routes import too_large

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
UNAUTHORIZED = "missing or wrong bearer token; send the header 'Authorization: Bearer <BNFOLD_API_KEY>'"
log = logging.getLogger("bnfold.service")


class ClientGone(Exception):
    """The client disconnected before its body arrived; nothing is answered."""


class FastInferMiddleware:
    """Answers V2 infer requests directly; passes everything else to the wrapped app."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane
        key = plane.settings.api_key
        self.expected_token = key.get_secret_value().encode() if key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = INFER_PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            status, content, response_headers = await self._infer(match, headers, receive)
        except ClientGone:
            return
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": content})

    async def _infer(
        self, match: re.Match[str], headers: dict[bytes, str], receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        try:
            self._check_token(headers.get(b"authorization", ""))
            body = await self._read_body(headers.get(b"content-length", ""), receive)
            binary_header = headers.get(b"inference-header-content-length")
            content, json_length = await infer_v2(self.plane, match[1], match[2], body, binary_header)
        except ServiceError as error:
            extra = [(b"www-authenticate", b"Bearer")] if error.status == 401 else []
            return error.status, *_json_error(error.message, extra)
        except ClientGone:
            raise
        except Exception as error:
            log.exception("unexpected error on POST %s", match[0], exc_info=error)
            return 500, *_json_error(f"internal error ({type(error).__name__}); see the server log", [])
        if json_length is None:
            return 200, content, _headers(b"application/json", content)
        extra = [(b"inference-header-content-length", str(json_length).encode())]
        return 200, content, _headers(b"application/octet-stream", content, extra)

    def _check_token(self, authorization: str) -> None:
        if self.expected_token is None:
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.expected_token):
            raise UnauthorizedError(UNAUTHORIZED)

    async def _read_body(self, declared: str, receive: Receive) -> bytes:
        """The whole body; 413 as soon as it is known to exceed the limit (declared or while streaming)."""
        limit = self.plane.settings.max_body_bytes
        if declared.isdigit() and int(declared) > limit:
            raise too_large(int(declared), limit)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(size, limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _headers(
    content_type: bytes, content: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type), (b"content-length", str(len(content)).encode()), *(extra or [])]


def _json_error(message: str, extra: list[tuple[bytes, bytes]]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    content = json.dumps({"error": message}, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return content, _headers(b"application/json", content, extra)
