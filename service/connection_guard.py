"""Bounds on slow and idle clients, enforced on uvicorn's connections (h11 and httptools alike).

uvicorn bounds only the idle time between keep-alive requests (`timeout_keep_alive`); a client that trickles
its request head byte by byte, or declares a body and stops sending it, holds a connection (and a file
descriptor) for ever. `ConnectionGuard` adds, without any work on the request path:

- a **head bound**: a connection that has not completed its request head `header_timeout_s` after it was
  first seen waiting for one (just connected, or bytes of a next request arrived) gets 408 and is closed;
- a **body bound**: a request whose body is still incomplete `body_timeout_s` after it was first seen, and
  that has no response yet, gets 408 and is closed (the app's `receive()` then returns `http.disconnect`);
- a **connection cap**: past `max_connections` open connections, a new connection makes room by closing the
  connection that has waited longest without a request in progress (an idle keep-alive one or a slow head);
  when every connection has a request in progress, the new one gets 503 and is closed. uvicorn's own
  `limit_concurrency` is not used: it answers 503 to every request, health checks included, while slow
  connections fill it.

`sweep()` runs on uvicorn's main-loop tick (twice a second, `GuardedServer` in service/uvicorn_server.py), so a
bound fires between 0 and 0.5 s after it is reached; `admit()` runs as each connection is made. Both read the
state uvicorn keeps on each protocol object (`cycle`, `transport`, `timeout_keep_alive_task`), which its h11
and httptools protocols share.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("bnfold.service.connections")

_NOT_HTTP = object()
HEAD, BODY, IDLE = "head", "body", "idle"


@dataclass(frozen=True)
class Bounds:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


class ConnectionGuard:
    """Applies `Bounds` to the set of connections of one uvicorn server."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self._seen: dict[Any, tuple[str, object, float]] = {}  # connection → (state, cycle, first seen)

    def sweep(self, connections: Iterable[Any], now: float) -> None:
        """Close every connection whose request head or body has taken longer than its bound."""
        seen: dict[Any, tuple[str, object, float]] = {}
        for connection in list(connections):
            state = _state(connection)
            if state is None:
                continue
            kind, cycle = state
            previous = self._seen.get(connection)
            since = previous[2] if previous is not None and previous[:2] == (kind, cycle) else now
            seen[connection] = (kind, cycle, since)
            if kind == HEAD and now - since >= self.bounds.header_timeout_s:
                message = f"the request head did not arrive within {self.bounds.header_timeout_s} s"
                self._close(connection, 408, message, "no complete request head")
            elif kind == BODY and now - since >= self.bounds.body_timeout_s:
                message = f"the request body did not arrive within {self.bounds.body_timeout_s} s of its head"
                self._close(connection, 408, message, "request body incomplete")
        self._seen = seen

    def admit(self, newcomer: Any, connections: Any, now: float) -> None:
        """Keep at most `max_connections` open: close the connection waiting longest for a request head (or
        idle), else the one waiting longest for a body; refuse `newcomer` when all have requests being answered."""
        self._seen[newcomer] = (HEAD, None, now)  # a head bound counts from the connection's start
        if len(connections) <= self.bounds.max_connections:
            return
        open_now = [c for c in connections if c.transport is not None and not c.transport.is_closing()]
        if len(open_now) <= self.bounds.max_connections:
            return
        victim = self._longest_waiting(open_now, newcomer, now, (HEAD, IDLE))
        if victim is None:
            victim = self._longest_waiting(open_now, newcomer, now, (BODY,))
        limit = self.bounds.max_connections
        message = f"the server is at its limit of {limit} connections; retry shortly"
        if victim is None:
            self._close(newcomer, 503, message, f"refused: {limit} connections, all with requests in progress")
        elif _state(victim) == (IDLE, victim.cycle):
            _cut(victim)
            _warn("closed %s: idle keep-alive connection closed to admit a new one", victim)
        else:
            kind = HEAD if _state(victim) == (HEAD, victim.cycle) else BODY
            self._close(victim, 503, message, f"the longest wait for a request {kind} ended to stay within {limit}")

    def _longest_waiting(self, connections: list[Any], newcomer: Any, now: float, kinds: tuple[str, ...]) -> Any:
        """The connection (not `newcomer`) in one of `kinds` seen in it the earliest; None if there is none."""
        victim, oldest = None, now
        for connection in connections:
            state = _state(connection) if connection is not newcomer else None
            if state is None or state[0] not in kinds:
                continue
            record = self._seen.get(connection)
            since = record[2] if record is not None and record[:2] == state else now
            if victim is None or since < oldest:
                victim, oldest = connection, since
        return victim

    def _close(self, connection: Any, status: int, message: str, event: str) -> None:
        _answer(connection, status, f"{message}; send the whole request without pausing")
        _warn("closed %s: " + event, connection)


def _state(connection: Any) -> tuple[str, object] | None:
    """(HEAD | BODY | IDLE, cycle) for a connection the guard bounds; None when a request is being answered,
    the connection is closing, or it is no HTTP/1 connection (a WebSocket)."""
    cycle: Any = getattr(connection, "cycle", _NOT_HTTP)
    transport = getattr(connection, "transport", None)
    if cycle is _NOT_HTTP or transport is None or transport.is_closing():
        return None
    if cycle is None or cycle.response_complete:
        # uvicorn arms its keep-alive timer after a response and cancels it when bytes of a next request come
        return (IDLE, cycle) if connection.timeout_keep_alive_task is not None else (HEAD, cycle)
    if cycle.more_body and not cycle.response_started:
        return BODY, cycle
    return None


def _answer(connection: Any, status: int, message: str) -> None:
    """Write a complete `status` response with {"error": message}, then close the connection."""
    cycle = connection.cycle
    if cycle is not None and not cycle.response_complete:
        cycle.response_started = True  # whatever the app sends later is dropped
        cycle.disconnected = True
        cycle.message_event.set()  # a receive() in progress returns http.disconnect
    body = json.dumps({"error": message}).encode()
    reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    connection.transport.write(head % (status, reason, len(body)) + body)
    _cut(connection)


def _cut(connection: Any) -> None:
    if connection.timeout_keep_alive_task is not None:
        connection.timeout_keep_alive_task.cancel()
        connection.timeout_keep_alive_task = None
    connection.transport.close()


def _warn(template: str, connection: Any) -> None:
    """One log line about `connection` (its client address as the argument: the template stays one kind for
    the log's rate limit)."""
    client = getattr(connection, "client", None)
    log.warning(template, f"{client[0]}:{client[1]}" if client else "a connection")


def guarded_protocol(base: type[asyncio.Protocol], guard: ConnectionGuard) -> type[asyncio.Protocol]:
    """`base` (uvicorn's H11Protocol or HttpToolsProtocol) with `guard.admit` run as each connection is made."""

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        base.connection_made(self, transport)
        guard.admit(self, self.connections, self.loop.time())

    return type(f"Guarded{base.__name__}", (base,), {"connection_made": connection_made})
