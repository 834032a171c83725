"""Optional bearer-token guard (BNFOLD_API_KEY), used as a FastAPI dependency on the protected routers."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from fastapi import Request
from pydantic import SecretStr

from bnfold.service.errors import UnauthorizedError

Guard = Callable[[Request], Awaitable[None]]


def bearer_guard(api_key: SecretStr | None) -> Guard:
    """A dependency that refuses requests without `Authorization: Bearer <api_key>`; a no-op without a key."""
    expected = expected_token(api_key)

    async def guard(request: Request) -> None:
        require_bearer(request.headers.get("authorization"), expected)

    return guard


def expected_token(api_key: SecretStr | None) -> bytes | None:
    """The token `require_bearer` compares with, or None when no key is set."""
    return api_key.get_secret_value().encode() if api_key is not None else None


def require_bearer(authorization: str | None, expected: bytes | None) -> None:
    """UnauthorizedError unless `authorization` is `Bearer <expected>` (constant-time compare); a no-op without
    a key. The one check of every transport (HTTP header, gRPC `authorization` metadata)."""
    if expected is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected):
        raise UnauthorizedError(
            "missing or wrong bearer token; send the header 'Authorization: Bearer <BNFOLD_API_KEY>'"
        )
