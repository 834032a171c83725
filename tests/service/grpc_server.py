"""The service as `bnfold serve` runs it — HTTP and gRPC in one uvicorn server and event loop — in a thread,
on free loopback ports, for the gRPC end-to-end tests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from bnfold.service.grpc_v2.server import HttpAndGrpcServer, create_server
from bnfold.service.settings import Settings
from tests.load.serve_process import free_port
from tests.service.server import wait_for


@dataclass
class RunningGrpcServer:
    """A live server: HTTP base URL and httpx client, and the gRPC address for tritonclient.grpc."""

    url: str
    grpc_address: str
    client: httpx.Client
    server: HttpAndGrpcServer


@contextmanager
def running_grpc_server(settings: Settings, wait_ready: bool = True) -> Iterator[RunningGrpcServer]:
    """Serve `settings` with HTTP on a free port and gRPC on another until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    grpc_port = free_port()
    quiet = settings.model_copy(update={"grpc_port": grpc_port, "access_log": False})  # no access lines in test output
    server = create_server(quiet, limit_logs=False, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with httpx.Client(base_url=url, timeout=30) as client:
        try:
            wait_for(client, "/v2/health/ready" if wait_ready else "/v2/health/live")
            yield RunningGrpcServer(url, f"127.0.0.1:{grpc_port}", client, server)
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            sock.close()
