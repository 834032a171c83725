"""`bnfold serve` as a real process serves gRPC beside HTTP on --grpc-port (BNFOLD_GRPC_PORT), not at all with
0, and refuses a gRPC port in use with one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.service.builders import write_entry
from tests.service.grpc_server import free_port
from tests.service.oracle import run_directly

ROOT = Path(__file__).resolve().parents[2]
BNFOLD = Path(sys.executable).parent / "bnfold"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("grpc_process")
    write_entry(root, "digits", rng)
    return root


@contextmanager
def serve(repository: Path, *arguments: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`bnfold serve` on a free HTTP port with extra flags; yields the HTTP URL once ready."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")}
    command = [str(BNFOLD), "serve", "--repository", str(repository), "--port", str(port), *arguments]
    process = subprocess.Popen(command, cwd=ROOT, env={**clean, **(env or {})}, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert process.poll() is None, process.communicate()[1]
        yield url
    finally:
        process.terminate()
        process.communicate(timeout=15)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_serve_answers_grpc_beside_http(repository: Path, rng: np.random.Generator, how: str) -> None:
    grpc_port = free_port()
    flags = ("--grpc-port", str(grpc_port)) if how == "flag" else ()
    env = {"BNFOLD_GRPC_PORT": str(grpc_port)} if how == "environment" else {}
    with serve(repository, *flags, env=env):
        client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_ready() and client.is_model_ready("digits")
        x = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("digits", [tensor])
        expected = run_directly(repository / "digits", "folded", x)
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
        client.close()


def test_grpc_port_zero_serves_http_only(repository: Path) -> None:
    grpc_port = free_port()
    with serve(repository, "--grpc-port", "0") as url:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        with pytest.raises(InferenceServerException, match=r"StatusCode\.UNAVAILABLE"):
            client.is_server_live(client_timeout=5)
        client.close()


def test_grpc_port_in_use_is_a_one_line_error(repository: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")}
        command = [str(BNFOLD), "serve", "--repository", str(repository), "--port", str(free_port())]
        result = subprocess.run(
            [*command, "--grpc-port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=clean,
            capture_output=True,
            text=True,
            timeout=60,
        )
    message = (
        f"bnfold serve: cannot listen for gRPC on 127.0.0.1:{port} (in use?); choose another --grpc-port, "
        "or 0 for no gRPC"
    )
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (1, message)
