"""The HTTP edge shared by the FastAPI routes and the fast infer path: bearer check, body reading, error bodies.

One home for each: `check_bearer` (the token rule and its message), `read_body` (the body limit while the body
streams in), `error_response` (exception → status, {"error": message} body, headers). Both paths call these, so
a request gets the same answer whichever path serves it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from bnfold.service.errors import BadRequestError, PayloadTooLargeError, ServiceError, UnauthorizedError
from bnfold.service.v2_response import encode_json

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Headers = list[tuple[bytes, bytes]]

UNAUTHORIZED = "missing or wrong bearer token; send the header 'Authorization: Bearer <BNFOLD_API_KEY>'"
SEVERAL_AUTHORIZATIONS = "several Authorization headers; send exactly one 'Authorization: Bearer <BNFOLD_API_KEY>'"
GLOBAL_LIMIT_FIX = "send a smaller batch or raise BNFOLD_MAX_BODY_BYTES"
log = logging.getLogger("bnfold.service")


class ClientGone(Exception):
    """The client disconnected (or reset its stream) before its answer could be sent; nothing is answered."""


def check_bearer(authorizations: Sequence[str], expected: bytes | None) -> None:
    """UnauthorizedError unless exactly one `Authorization: Bearer <token>` header carries the expected token.

    Several Authorization headers are refused whatever they hold: which one counts would otherwise depend on
    the code reading them. No key configured (`expected` None) lets every request through.
    """
    if expected is None:
        return
    if len(authorizations) > 1:
        raise UnauthorizedError(SEVERAL_AUTHORIZATIONS)
    scheme, _, token = (authorizations[0] if authorizations else "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected):
        raise UnauthorizedError(UNAUTHORIZED)


def too_large(size: int, limit: int, fix: str = GLOBAL_LIMIT_FIX) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"request body of {size} bytes or more is over the limit of {limit} bytes; {fix}")


async def read_body(receive: Receive, declared: str, limit: int, fix: str = GLOBAL_LIMIT_FIX) -> bytes:
    """The whole body from ASGI `receive`; 413 as soon as it is known to exceed `limit` (declared or streamed)."""
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit, fix)
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit, fix)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_route_body(receive: Receive, declared: str, limit: int) -> bytes:
    """`read_body` for a FastAPI route: a client gone before its body arrived (or cut off by the body-time
    bound) is a 400 whose answer reaches nobody, so nothing unexpected is logged."""
    try:
        return await read_body(receive, declared, limit)
    except ClientGone:
        raise BadRequestError("the client closed the connection before its request body arrived") from None


def response_headers(content_type: bytes, content: bytes, extra: Headers | None = None) -> Headers:
    return [(b"content-type", content_type), (b"content-length", str(len(content)).encode()), *(extra or [])]


def error_response(error: Exception, where: str) -> tuple[int, bytes, Headers]:
    """Status, {"error": message} body and headers for any exception raised while answering `where`.

    A ServiceError maps to its own status (401 adds `WWW-Authenticate: Bearer`); anything else is a 500 whose
    body names only the exception type, the traceback going to the log.
    """
    if isinstance(error, ServiceError):
        status, message = error.status, error.message
    else:
        log.exception("unexpected error on %s", where, exc_info=error)
        status, message = 500, f"internal error ({type(error).__name__}); see the server log"
    content = encode_json({"error": message})
    extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
    return status, content, response_headers(b"application/json", content, extra)
