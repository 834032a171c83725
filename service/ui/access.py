"""How a browser passes BNFOLD_API_KEY to the /ui pages: a login form that sets a session cookie.

POST /ui/login with the key (form field `key`) answers 303 → /ui and sets the cookie `bnfold_ui`, HttpOnly
(page scripts cannot read it), SameSite=Strict (other sites cannot make the browser send it), Path=/ui
(only the UI's routes receive it), Secure when the request came over https. Its value is
HMAC-SHA256(key, "bnfold-ui-session"), so the cookie never holds the key itself and changes with it. The UI
routes also accept the usual `Authorization: Bearer <key>` header (curl, tests). Without a key configured,
everything is open, as for the other routes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request, Response
from pydantic import SecretStr

COOKIE = "bnfold_ui"
SESSION_CONTEXT = b"bnfold-ui-session"


class UiAccess:
    """Checks a request's cookie or bearer token against the configured key."""

    def __init__(self, api_key: SecretStr | None) -> None:
        self.key = api_key.get_secret_value().encode() if api_key is not None else None

    @property
    def required(self) -> bool:
        return self.key is not None

    def session_value(self) -> str:
        assert self.key is not None
        return hmac.new(self.key, SESSION_CONTEXT, hashlib.sha256).hexdigest()

    def key_matches(self, offered: str) -> bool:
        return self.key is None or secrets.compare_digest(offered.strip().encode(), self.key)

    def allows(self, request: Request) -> bool:
        """True without a key, or with the right bearer token, or with the session cookie."""
        if self.key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.key):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return secrets.compare_digest(cookie.encode(), self.session_value().encode())

    def log_in(self, response: Response, request: Request) -> None:
        response.set_cookie(
            COOKIE,
            self.session_value(),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def log_out(response: Response) -> None:
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
