"""The uvicorn server of `bnfold serve`, with the connection bounds of service/connection_guard.py.

`build_server(app, settings)` makes a `uvicorn.Config` from the settings — keep-alive timeout, graceful
shutdown bound, HTTP implementation (h11 or httptools; "auto" = httptools when installed) wrapped by
`coalescing_protocol` (one socket write per small response) and `guarded_protocol` — and a `GuardedServer`,
whose main-loop tick (every 0.1 s) also sweeps the connections every 0.5 s and flushes the rate-limited log's
counts.

The connection cap is lowered, if needed, to what the process's open-file limit leaves: RLIMIT_NOFILE minus
the descriptors already open minus a reserve for model files, log files and onnxruntime; a server that runs
out of descriptors can accept nobody (health checks included) and logs every failed accept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from bnfold.service.app import ServiceApp
from bnfold.service.coalesced_writes import coalescing_protocol
from bnfold.service.connection_guard import Bounds, ConnectionGuard, guarded_protocol
from bnfold.service.rate_limited_log import RateLimitFilter, install
from bnfold.service.settings import Settings

SWEEP_EVERY_TICKS = 5  # uvicorn ticks every 0.1 s
DESCRIPTOR_RESERVE = 64
log = logging.getLogger("bnfold.service.connections")


class GuardedServer(uvicorn.Server):
    """uvicorn.Server whose tick also runs the connection guard and flushes the log limiter."""

    def __init__(self, config: uvicorn.Config, guard: ConnectionGuard, limiter: RateLimitFilter | None) -> None:
        super().__init__(config)
        self.guard, self.limiter = guard, limiter
        if isinstance(config.app, ServiceApp):  # a request alone in this set of request tasks skips the batch queue
            config.app.plane.http_requests = self.server_state.tasks

    async def on_tick(self, counter: int) -> bool:
        if counter % SWEEP_EVERY_TICKS == 0:
            self.guard.sweep(self.server_state.connections, asyncio.get_running_loop().time())
            if self.limiter is not None:
                self.limiter.flush()
        return await super().on_tick(counter)


def build_server(app: Any, settings: Settings, *, limit_logs: bool = True, **config: Any) -> GuardedServer:
    """The server for `app` under `settings`; `config` adds uvicorn.Config arguments (host, port, log_level…).
    `limit_logs`: put the rate limit on the root and uvicorn log handlers (off for servers inside tests)."""
    return GuardedServer(*server_parts(app, settings, limit_logs=limit_logs, **config))


def server_parts(
    app: Any, settings: Settings, *, limit_logs: bool = True, **config: Any
) -> tuple[uvicorn.Config, ConnectionGuard, RateLimitFilter | None]:
    """What a `GuardedServer` (or a subclass) is built from: the uvicorn config, the guard, the log limiter."""
    bounds = Bounds(settings.header_timeout_s, settings.body_timeout_s, connection_cap(settings.max_connections))
    guard = ConnectionGuard(bounds)
    base = AutoHTTPProtocol if settings.http_protocol == "auto" else _protocol_class(settings.http_protocol)
    uvicorn_config = uvicorn.Config(
        app,
        http=guarded_protocol(coalescing_protocol(base), guard),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        access_log=False,  # the app writes its own, cheaper (service.access_log)
        **config,
    )
    limiter = None
    if limit_logs:
        limiter = RateLimitFilter(settings.log_burst, settings.log_interval_s)
        install(limiter)
    return uvicorn_config, guard, limiter


def _protocol_class(name: str) -> type[asyncio.Protocol]:
    if name == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


def connection_cap(configured: int) -> int:
    """`configured`, lowered to fit the open-file limit (at least 1); logs when it is lowered."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 0
    if soft == resource.RLIM_INFINITY:
        return configured
    available = max(1, soft - open_now - DESCRIPTOR_RESERVE)
    if available < configured:
        log.warning(
            "max_connections lowered from %d to %d: the open-file limit is %d (ulimit -n) and %d are in use",
            configured, available, soft, open_now,
        )  # fmt: skip
        return available
    return configured
