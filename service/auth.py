"""Optional bearer-token guard (BNFOLD_API_KEY), used as a FastAPI dependency on the protected routers.

The rule itself (one header, the right token) is `service.edge.check_bearer`, shared with the fast infer path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from pydantic import SecretStr

from bnfold.service.edge import check_bearer
from bnfold.service.errors import UnauthorizedError

Guard = Callable[[Request], Awaitable[None]]


def expected_token(api_key: SecretStr | None) -> bytes | None:
    return api_key.get_secret_value().encode() if api_key is not None else None


def bearer_guard(api_key: SecretStr | None) -> Guard:
    """A dependency that refuses requests without `Authorization: Bearer <api_key>`; a no-op without a key."""
    expected = expected_token(api_key)

    async def guard(request: Request) -> None:
        check_bearer(request.headers.getlist("authorization"), expected)

    return guard


def is_authenticated(request: Request, api_key: SecretStr | None) -> bool:
    """The request may see details (no key configured, or exactly one right bearer token)."""
    try:
        check_bearer(request.headers.getlist("authorization"), expected_token(api_key))
    except UnauthorizedError:
        return False
    return True
