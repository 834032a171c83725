"""Run the service in a real uvicorn server on a free 127.0.0.1 port, in a thread, for end-to-end tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from bnfold.service.app import create_app
from bnfold.service.settings import Settings
from bnfold.service.uvicorn_server import build_server


@dataclass
class RunningServer:
    """A live server: its base URL, address for tritonclient, and an httpx client bound to it."""

    url: str
    address: str
    client: httpx.Client


@contextmanager
def running_server(settings: Settings, wait_ready: bool = True) -> Iterator[RunningServer]:
    """Serve `settings` on a free loopback port until the block ends, then stop the server."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it every
    # response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    quiet = settings.model_copy(update={"access_log": False})  # no access lines in the tests' own output
    server = build_server(create_app(quiet), quiet, limit_logs=False, log_level="warning", lifespan="on")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=30) as client:
        try:
            wait_for(client, "/v2/health/ready" if wait_ready else "/v2/health/live")
            yield RunningServer(url, f"127.0.0.1:{port}", client)
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            sock.close()


def wait_for(client: httpx.Client, path: str, timeout: float = 30.0) -> None:
    """Poll `path` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get(path).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"server did not answer 200 on {path} within {timeout} s")
