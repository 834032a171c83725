"""The event loop and HTTP parser uvicorn runs `bnfold serve` on: uvloop + httptools, the fast stack.

uvicorn's defaults (`auto`) pick them only when they happen to be installed and fall back silently to asyncio +
h11, which costs about a third of the server CPU per small request. `bnfold serve` asks for them explicitly
(they come with `uvicorn[standard]`, a serving dependency) and says so with a warning when one is missing.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

log = logging.getLogger("bnfold.service")


@dataclass(frozen=True)
class ServerStack:
    """uvicorn's `loop` and `http` settings."""

    loop: str
    http: str

    def describe(self) -> str:
        return f"event loop {self.loop}, HTTP parser {self.http}"


def fast_stack(http_protocol: str = "auto") -> ServerStack:
    """uvloop when importable, else asyncio (with a warning); the HTTP parser `http_protocol` names, or for
    "auto" httptools when importable, else h11 (with a warning) — what uvicorn's auto protocol then runs."""
    loop = _first_importable("uvloop", "asyncio")
    http = http_protocol if http_protocol != "auto" else _first_importable("httptools", "h11")
    return ServerStack(loop, http)


def _first_importable(fast: str, fallback: str) -> str:
    if importlib.util.find_spec(fast) is not None:
        return fast
    log.warning(
        "%s is not installed: serving on %s, which costs more CPU per request; install uvicorn[standard]",
        fast,
        fallback,
    )
    return fallback
