"""`bnfold serve --workers N`: N serving processes on one port, with metrics summed over all of them.

The parent (`serve_workers`) binds the HTTP socket once and hands it to uvicorn's process supervisor
(`uvicorn.supervisors.Multiprocess`, what `uvicorn --workers N` runs): N spawned children accept on the same
socket, so the kernel spreads connections between them. Each child builds its own app from the same settings
(`worker_app`, the import-string factory uvicorn needs): its own registry, onnxruntime sessions, batchers and
equivalence state, with max(1, cores // N) cores of its own (`Settings.cores_per_worker`: intra-op threads =
max(1, cores // N // sessions)). The supervisor restarts a worker that dies, and on SIGTERM or SIGINT sends
SIGTERM to every worker — each finishes its in-flight requests (uvicorn's graceful shutdown) — and waits for
all of them before the parent exits.

Metrics: prometheus-client's multiprocess mode. The parent creates a fresh, empty PROMETHEUS_MULTIPROC_DIR
(a temporary directory, removed when the parent stops) before the children start; each child writes its
values there and `/metrics`, whichever worker answers, reads every child's files (`ServiceMetrics.render`):
counters and histograms are summed over the workers (a dead worker's counts are kept), gauges combine as
their `multiprocess_mode` says (`metrics.py`). A worker that stops cleanly removes its live gauges; at start a
worker also removes those of workers that died without doing so.

Every response carries `X-Bnfold-Worker: <pid>` naming the process that answered it (only with N > 1).
State that lives in one process stays per worker: a failed equivalence check degrades `folded` in the
worker that saw it (`bnfold_folded_degraded` is the maximum over live workers), `/v2/models/{m}/stats` are
that worker's figures, and readiness is that worker's readiness.

gRPC: each worker serves the gRPC port as well (`serve_grpc_too`): its gRPC server starts and stops with the
worker app's lifespan and binds with SO_REUSEPORT, which lets the N processes bind one port and spreads
connections between them. The single-process server does not share the port, so a port already in use is an
error there. A worker's gRPC port stops when its lifespan ends, after uvicorn's graceful shutdown of HTTP, with
BNFOLD_GRACEFUL_SHUTDOWN_S of its own (the single-process server stops both ports at once).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bnfold.service.settings import Settings

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
SETTINGS_VARIABLE = "BNFOLD_SERVE_WORKER_SETTINGS"  # JSON of the parent's validated settings, for the children
WORKER_HEADER = b"x-bnfold-worker"
LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


def serve_workers(settings: Settings) -> None:
    """Run `settings.workers` serving processes on settings.host:settings.port until SIGTERM/SIGINT."""
    import uvicorn

    directory = tempfile.mkdtemp(prefix="bnfold-metrics-")
    os.environ[MULTIPROC_DIR] = directory
    os.environ[SETTINGS_VARIABLE] = encode_settings(settings)
    try:
        uvicorn.run(
            "bnfold.service.workers:worker_app",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,  # each worker's app writes its own (service.access_log)
            loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            timeout_keep_alive=settings.keep_alive_timeout_s,
            timeout_graceful_shutdown=settings.graceful_shutdown_s,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def encode_settings(settings: Settings) -> str:
    """The settings as JSON, the API key in clear (children inherit it through the environment, as the
    parent got it)."""
    document = settings.model_dump(mode="json", exclude={"api_key"})
    document["api_key"] = settings.api_key.get_secret_value() if settings.api_key is not None else None
    return json.dumps(document)


def decode_settings(text: str) -> Settings:
    return Settings(**json.loads(text))


def worker_app() -> ASGIApp:
    """The app of one worker (uvicorn calls this factory in each child process)."""
    from bnfold.service.app import create_app

    settings = decode_settings(os.environ[SETTINGS_VARIABLE])
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    directory = Path(os.environ[MULTIPROC_DIR])
    forget_dead_workers(directory)
    atexit.register(_mark_dead, os.getpid(), directory)
    app = create_app(settings)
    if settings.grpc_port:
        serve_grpc_too(app)
    return WorkerHeader(app, os.getpid())


def serve_grpc_too(app: FastAPI) -> None:
    """Run this worker's gRPC server (same data plane) with the app's lifespan, on the shared gRPC port."""
    from bnfold.service.grpc_v2.server import create_grpc_server

    plane = app.state.plane
    http_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        server = create_grpc_server(plane, app.state.control, share_port=True)
        await server.start()
        try:
            async with http_lifespan(application) as state:
                yield state
        finally:
            await server.stop(plane.settings.graceful_shutdown_s)

    app.router.lifespan_context = lifespan


def forget_dead_workers(directory: Path) -> list[int]:
    """Remove the live-gauge files of workers that are no longer running; returns their pids."""
    from prometheus_client import multiprocess

    dead = sorted({int(m[1]) for p in directory.iterdir() if (m := LIVE_GAUGE_FILE.fullmatch(p.name))})
    dead = [pid for pid in dead if not _running(pid)]
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))
    return dead


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mark_dead(pid: int, directory: Path) -> None:
    if directory.is_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(directory))


class WorkerHeader:
    """ASGI wrapper adding `X-Bnfold-Worker: <pid>` to every HTTP response."""

    def __init__(self, app: ASGIApp, pid: int) -> None:
        self.app = app
        self.header = (WORKER_HEADER, str(pid).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)
