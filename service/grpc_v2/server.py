"""The gRPC server of a data plane, and `serve`: HTTP (uvicorn) and gRPC in one process and event loop.

The gRPC server shares the app's data plane — registry, batchers, equivalence policy, metrics, limits — so a
request is batched with HTTP requests for the same model and counted in the same metrics. It is, as
BNFOLD_GRPC_TRANSPORT says, bnfold's own HTTP/2 server on zttp (`http2_server.Http2GrpcServer`, the default) or
grpc's own grpc.aio server (`grpcio`). Either refuses messages larger than BNFOLD_MAX_BODY_BYTES, and calls
or streams beyond BNFOLD_GRPC_MAX_CONCURRENT_RPCS in progress, with RESOURCE_EXHAUSTED before they are parsed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
from types import FrameType
from typing import Any, Protocol

import grpc
import uvicorn

from bnfold.service.connection_guard import ConnectionGuard
from bnfold.service.control import RepositoryControl
from bnfold.service.dataplane import DataPlane
from bnfold.service.grpc_v2.inference_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from bnfold.service.grpc_v2.servicer import InferenceServicer
from bnfold.service.rate_limited_log import RateLimitFilter
from bnfold.service.settings import Settings
from bnfold.service.uvicorn_server import GuardedServer, server_parts

log = logging.getLogger("bnfold.service")


class GrpcPortError(RuntimeError):
    """The gRPC port cannot be bound."""


def grpc_address(host: str, port: int) -> str:
    """host:port as grpc writes it (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer(Protocol):
    """What `serve` needs of a gRPC server (grpc.aio.Server has it, and so has Http2GrpcServer)."""

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> Any: ...


def create_grpc_server(plane: DataPlane, control: RepositoryControl, share_port: bool = False) -> GrpcServer:
    """The gRPC server of settings.grpc_transport with `inference.GRPCInferenceService`, bound to
    settings.host:settings.grpc_port.

    `share_port` (the workers of `--workers N`): SO_REUSEPORT, so every worker binds the same port and the
    kernel spreads connections; otherwise a port in use is an error, never two servers sharing it."""
    settings = plane.settings
    address = grpc_address(settings.host, settings.grpc_port)
    if settings.grpc_transport == "http2":
        return _http2_server(plane, control, share_port, address)
    server = grpc.aio.server(
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", int(share_port)),
        ],
    )
    add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane, control), server)
    try:
        server.add_insecure_port(address)
    except RuntimeError:
        raise GrpcPortError(_port_error(address)) from None
    return server


def _port_error(address: str) -> str:
    return f"cannot listen for gRPC on {address} (in use?); choose another --grpc-port, or 0 for no gRPC"


def _http2_server(plane: DataPlane, control: RepositoryControl, share_port: bool, address: str) -> GrpcServer:
    if importlib.util.find_spec("zttp") is None:
        raise GrpcPortError("BNFOLD_GRPC_TRANSPORT=http2 needs zttp (pip install zttp), or set it to grpcio")
    from bnfold.service.grpc_v2.http2 import FRAME_HEADER, GrpcOverHttp2
    from bnfold.service.grpc_v2.http2_server import Http2GrpcServer, bind_grpc_socket

    settings = plane.settings
    try:
        listener = bind_grpc_socket(settings.host, settings.grpc_port, share_port)
    except OSError:
        raise GrpcPortError(_port_error(address)) from None
    servicer = InferenceServicer(plane, control, counts_calls=False)
    app = GrpcOverHttp2(servicer, settings.max_body_bytes, settings.grpc_max_concurrent_rpcs)
    server = Http2GrpcServer(app, listener, settings.graceful_shutdown_s, settings.max_body_bytes + FRAME_HEADER)
    plane.grpc_requests = server.tasks  # its calls, created as their headers arrive
    return server


class HttpAndGrpcServer(GuardedServer):
    """The uvicorn server of `bnfold serve` (with the connection bounds of GuardedServer) that also serves gRPC on
    the same data plane, started and stopped with it (same event loop): `run()` / `serve()` / `should_exit` work
    as on uvicorn.Server. On shutdown both ports stop at once (the gRPC port sends GOAWAY while HTTP stops
    accepting) and the calls and requests in progress on either get BNFOLD_GRACEFUL_SHUTDOWN_S to finish."""

    def __init__(
        self,
        config: uvicorn.Config,
        guard: ConnectionGuard,
        limiter: RateLimitFilter | None,
        plane: DataPlane,
        control: RepositoryControl,
    ) -> None:
        super().__init__(config, guard, limiter)
        self.plane, self.control = plane, control
        self.grpc_server: GrpcServer | None = None
        self._grpc_stopping: asyncio.Future[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grpc_forced: asyncio.Future[Any] | None = None  # grpc.aio's stop(0), referenced while it runs

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        settings = self.plane.settings
        self._loop = asyncio.get_running_loop()
        if settings.grpc_port:
            self.grpc_server = create_grpc_server(self.plane, self.control)
            await self.grpc_server.start()
            log.info(
                "gRPC (inference.GRPCInferenceService) on %s, served by %s",
                grpc_address(settings.host, settings.grpc_port),
                "bnfold's HTTP/2 (zttp)" if settings.grpc_transport == "http2" else "grpcio",
            )
        try:
            await super().serve(sockets)
        finally:
            await self._stop_grpc()  # HTTP's startup failed, or its shutdown raised: the gRPC stop still ends

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await asyncio.gather(super().shutdown(sockets), self._stop_grpc())

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """uvicorn's: the first SIGINT/SIGTERM stops gracefully, a second SIGINT forces the exit; forced, the gRPC
        port ends its calls at once too (UNAVAILABLE)."""
        super().handle_exit(sig, frame)
        if self.force_exit and self._loop is not None and self.grpc_server is not None:
            self._loop.call_soon_threadsafe(self._force_grpc_stop, self.grpc_server)

    async def _stop_grpc(self) -> None:
        """Stop the gRPC server once (every caller waits for that one stop), giving calls the grace period."""
        if self.grpc_server is None:
            return
        if self._grpc_stopping is None:
            grace = self.plane.settings.graceful_shutdown_s
            self._grpc_stopping = asyncio.ensure_future(self.grpc_server.stop(grace))
        await self._grpc_stopping

    def _force_grpc_stop(self, server: GrpcServer) -> None:
        force_stop = getattr(server, "force_stop", None)  # Http2GrpcServer's; grpc.aio's is stop(0)
        if force_stop is not None:
            force_stop()
        else:
            self._grpc_forced = asyncio.ensure_future(server.stop(0))


def create_server(settings: Settings, *, limit_logs: bool = True, **config: Any) -> HttpAndGrpcServer:
    """The app of `settings` in a uvicorn server (host, port, log level from the settings; `config` adds
    uvicorn options), with gRPC on settings.grpc_port unless it is 0. `limit_logs` as in `build_server`."""
    from bnfold.service.app import create_app

    app = create_app(settings)
    options = {"host": settings.host, "port": settings.port, "log_level": settings.log_level, **config}
    return HttpAndGrpcServer(
        *server_parts(app, settings, limit_logs=limit_logs, **options), app.state.plane, app.state.control
    )
