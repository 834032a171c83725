"""Training is deterministic, cached by name + seed + code/config hash, and the commands need no retraining."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnfold.models.zoo import cache
from bnfold.models.zoo.catalog import ZOO, trained
from tests.models.cli_helpers import bnfold

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def test_training_is_deterministic(tmp_path: Path) -> None:
    first = trained("breast_cancer_mlp", cache_dir=tmp_path / "a")
    second = trained("breast_cancer_mlp", cache_dir=tmp_path / "b")
    assert not first.from_cache and not second.from_cache
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert first.metrics == second.metrics


def test_cache_hit_returns_the_same_weights(tmp_path: Path) -> None:
    first = trained("breast_cancer_mlp", cache_dir=tmp_path)
    again = trained("breast_cancer_mlp", cache_dir=tmp_path)
    assert again.from_cache and again.weights_path == first.weights_path
    assert again.metrics == first.metrics and not again.model.training
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_cache_key_changes_with_seed_and_config() -> None:
    config = repr(ZOO["digits_resnet"].config)
    base = cache.CacheKey("digits_resnet", 0, config)
    assert base.stem().startswith("digits_resnet-seed0-")
    assert cache.CacheKey("digits_resnet", 1, config).stem() != base.stem()
    assert cache.CacheKey("digits_resnet", 0, config + "x").digest() != base.digest()


def test_unreadable_cache_entry_is_retrained(tmp_path: Path) -> None:
    first = trained("breast_cancer_mlp", cache_dir=tmp_path)
    first.weights_path.write_bytes(b"truncated")
    again = trained("breast_cancer_mlp", cache_dir=tmp_path)
    assert not again.from_cache and again.metrics == first.metrics


def test_train_command_reads_the_cache(
    capsys: pytest.CaptureFixture[str], zoo_cache_dir: Path, zoo_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BNFOLD_CACHE_DIR", str(zoo_cache_dir))
    ran = bnfold(capsys, "train", "--json")
    assert ran.code == 0, ran.err
    rows = {row["name"]: row for row in ran.json()["models"]}
    assert set(rows) == set(ZOO) and all(row["from_cache"] for row in rows.values())
    assert rows["digits_resnet"]["metrics"]["test_accuracy"] >= 0.97
    assert bnfold(capsys, "train", "nope").err.strip() == (
        "bnfold train: no zoo model 'nope'; choose from: digits_resnet, digits_mobilenet, digits_autoencoder, "
        "breast_cancer_mlp"
    )


def test_verify_runs_without_torch(zoo_repository: Path) -> None:
    """`bnfold verify` needs only onnx, onnxruntime and numpy: torch is never imported."""
    script = (
        "import sys; from bnfold.cli.dispatch import main; code = main(['verify', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(zoo_repository / "digits_mobilenet")],
        cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("digits_mobilenet: verified")
