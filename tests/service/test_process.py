"""Process-level checks: the service imports neither torch nor folding; `bnfold serve` runs from flags and
BNFOLD_ environment variables, and refuses bad settings with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.load.serve_process import free_port
from tests.service.builders import write_entry

ROOT = Path(__file__).resolve().parents[2]
BNFOLD = Path(sys.executable).parent / "bnfold"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("process")
    write_entry(root, "digits", rng)
    return root


def test_service_never_imports_torch_or_folding(repository: Path) -> None:
    """Build the app and load a repository in a fresh interpreter, then look at sys.modules."""
    script = f"""
import json, sys
from bnfold.service.app import create_app
from bnfold.service.cli import build_parser, serve_main
from bnfold.service.loader import load_all
from bnfold.service.settings import Settings
app = create_app(Settings(repository={str(repository)!r}))
plane = app.state.plane
load_all(plane.registry, plane.settings)
forbidden = ('torch', 'onnx', 'onnxscript', 'onnx_ir', 'bnfold.folding', 'bnfold.models', 'bnfold.cli')
loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in forbidden))
assert 'bnfold.service.app' in sys.modules and 'bnfold.contract' in sys.modules  # the check looks at real names
print(json.dumps({{"ready": plane.registry.models["digits"].state, "loaded": loaded}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"ready": "ready", "loaded": []}


@pytest.fixture
def serve_process(repository: Path) -> Iterator[str]:
    """`bnfold serve` with the repository from BNFOLD_REPOSITORY and host/port from flags."""
    port = free_port()
    env = {**os.environ, "BNFOLD_REPOSITORY": str(repository), "BNFOLD_EQUIVALENCE_POLICY": "always"}
    env["BNFOLD_GRPC_PORT"] = "0"  # HTTP only here (tests/service/test_grpc_process.py serves gRPC)
    command = [str(BNFOLD), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.communicate(timeout=15)


def test_bnfold_serve_from_flags_and_environment(serve_process: str) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32).tolist()
    body = httpx.post(f"{serve_process}/predict", json={"model": "digits", "inputs": x}).json()
    assert body["variant"] == "folded" and body["equivalence"]["agree"] is True  # policy 'always' from env


@pytest.mark.parametrize(
    ("arguments", "env", "message"),
    [
        (
            ["--repository", "/nonexistent/repo"],
            {},
            "bnfold serve: --repository (or BNFOLD_REPOSITORY): repository '/nonexistent/repo' is not a directory; "
            "build one with bnfold build-default",
        ),
        (
            ["--port", "http"],
            {"BNFOLD_REPOSITORY": "."},
            "bnfold serve: --port (or BNFOLD_PORT): Input should be a valid integer, unable to parse string as "
            "an integer",
        ),
        (
            [],
            {"BNFOLD_REPOSITORY": ".", "BNFOLD_EQUIVALENCE_POLICY": "never"},
            "bnfold serve: --equivalence-policy (or BNFOLD_EQUIVALENCE_POLICY): Input should be 'off', 'sample' or "
            "'always'",
        ),
    ],
    ids=["missing_repository", "bad_port", "bad_policy_env"],
)
def test_bad_settings_are_one_line_errors(arguments: list[str], env: dict[str, str], message: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")}
    result = subprocess.run(
        [str(BNFOLD), "serve", *arguments], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr.strip(), result.stdout) == (2, message, "")
