"""Fixtures of the service tests: random repositories built with onnx.helper, and a real uvicorn server."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bnfold.service.settings import Settings
from tests.service.builders import Weights, build_graph, write_entry
from tests.service.server import RunningServer, running_server


@pytest.fixture(scope="module", params=["http2", "grpcio"])
def grpc_transport(request: pytest.FixtureRequest) -> str:
    """Each gRPC test module runs against both servers of the gRPC port (BNFOLD_GRPC_TRANSPORT)."""
    return str(request.param)


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    """A fresh random generator per module; the seed is printed so a failure can be replayed."""
    seed = secrets.randbits(32)
    print(f"service test seed: {seed}")
    return np.random.default_rng(seed)


def rewrite_sha(entry: Path, variant: str) -> None:
    """Make model.json's digest match the (tampered) file, so only the equivalence gate can catch it."""
    import hashlib

    manifest = json.loads((entry / "model.json").read_text())
    digest = hashlib.sha256((entry / manifest["variants"][variant]["file"]).read_bytes()).hexdigest()
    manifest["variants"][variant]["sha256"] = digest
    (entry / "model.json").write_text(json.dumps(manifest))


def build_mixed_repository(root: Path, rng: np.random.Generator) -> dict[str, Weights]:
    """Two good models and five broken ones (each broken in its own way); returns the good models' weights."""
    good = {
        "digits": write_entry(root, "digits", rng)[0],
        "regressor": write_entry(root, "regressor", rng, task="regression")[0],
    }
    wrong = Weights.random(rng)
    write_entry(root, "tampered", rng, folded_model=build_graph(wrong, folded=True))
    write_entry(root, "truncated", rng)
    folded = root / "truncated" / "folded.onnx"
    folded.write_bytes(folded.read_bytes()[:100])
    write_entry(root, "missing_file", rng)
    (root / "missing_file" / "unfolded.onnx").unlink()
    write_entry(root, "bad_json", rng)
    (root / "bad_json" / "model.json").write_text('{"format": "bnfold-repository/1", ')
    write_entry(root, "invalid_onnx", rng)
    (root / "invalid_onnx" / "folded.onnx").write_bytes(b"not an onnx file at all")
    rewrite_sha(root / "invalid_onnx", "folded")
    return good


@pytest.fixture(scope="module")
def mixed_repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("repository")
    return root, build_mixed_repository(root, rng)


@pytest.fixture(scope="module")
def server(mixed_repository: tuple[Path, dict]) -> Iterator[RunningServer]:
    """The mixed repository served with every default request checked (policy 'always')."""
    settings = Settings(repository=mixed_repository[0], equivalence_policy="always")
    with running_server(settings) as running:
        yield running
