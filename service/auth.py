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
    expected = api_key.get_secret_value().encode() if api_key is not None else None

    async def guard(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected):
            raise UnauthorizedError(
                "missing or wrong bearer token; send the header 'Authorization: Bearer <BNFOLD_API_KEY>'"
            )

    return guard
