"""scripts/fold.sh, the command of docker compose's one-shot `fold` service, run outside Docker in the
builder stage's environment: it seeds the shared volume with the image's default repository, folds a model
the user dropped into the incoming directory, verifies everything, is idempotent, and fails loudly (non-zero,
so `api` does not start) on a model it cannot fold."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.container_build import REPO_ROOT, StageEnvironment
from tests.deploy.reference import batchnorm_nodes

pytestmark = pytest.mark.slow
FOLD_SCRIPT = REPO_ROOT / "scripts" / "fold.sh"
USER_MODEL = "my_net"


Completed = subprocess.CompletedProcess[str]


def run_fold(builder: StageEnvironment, defaults: Path, volume: Path, incoming: Path) -> Completed:
    env = builder.env(
        BNFOLD_REPOSITORY=str(volume), BNFOLD_DEFAULT_REPOSITORY=str(defaults), BNFOLD_INCOMING=str(incoming)
    )
    return subprocess.run([str(FOLD_SCRIPT)], env=env, capture_output=True, text=True, timeout=600, check=False)


def entry_names(repository: Path) -> set[str]:
    return {path.parent.name for path in repository.glob("*/model.json")}


@pytest.fixture(scope="module")
def incoming(default_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's drop-in directory holding one ONNX model with BatchNorm (a zoo model's unfolded graph)."""
    directory = tmp_path_factory.mktemp("incoming")
    source = sorted(default_repository.glob("*/unfolded.onnx"))[0]
    shutil.copy(source, directory / f"{USER_MODEL}.onnx")
    return directory


def test_fold_seeds_the_volume_folds_the_dropped_model_and_verifies(
    builder: StageEnvironment, default_repository: Path, incoming: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "models"
    result = run_fold(builder, default_repository, volume, incoming)
    assert result.returncode == 0, result.stderr
    assert entry_names(volume) == entry_names(default_repository) | {USER_MODEL}
    assert not [path for path in volume.iterdir() if path.name.startswith(".")]  # no temporary left behind
    manifest = json.loads((volume / USER_MODEL / "model.json").read_text())
    assert batchnorm_nodes(volume / USER_MODEL / "unfolded.onnx") > 0
    assert batchnorm_nodes(volume / USER_MODEL / "folded.onnx") == manifest["variants"]["folded"]["batchnorm_nodes"]
    assert manifest["variants"]["folded"]["batchnorm_nodes"] == 0
    count = len(entry_names(volume))
    assert result.stdout.rstrip().endswith(f"fold.sh: {count} models verified in {volume}")

    again = run_fold(builder, default_repository, volume, incoming)
    assert again.returncode == 0, again.stderr
    assert f"fold.sh: {USER_MODEL} is already in the repository" in again.stdout
    assert "added default model" not in again.stdout


def test_fold_fails_loudly_on_a_model_it_cannot_read(
    builder: StageEnvironment, default_repository: Path, tmp_path: Path
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "broken.onnx").write_bytes(b"this is not an ONNX model")
    result = run_fold(builder, default_repository, tmp_path / "models", incoming)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("bnfold fold-and-export: ") and str(incoming / "broken.onnx") in line
    assert not (tmp_path / "models" / "broken").exists()


def test_fold_fails_when_there_is_nothing_to_serve(builder: StageEnvironment, tmp_path: Path) -> None:
    volume, empty = tmp_path / "models", tmp_path / "empty"
    empty.mkdir()
    result = run_fold(builder, empty, volume, empty)
    assert result.returncode == 1
    assert result.stderr == (
        f"fold.sh: no model in {volume}; the image's default repository {empty} is missing or empty\n"
    )
