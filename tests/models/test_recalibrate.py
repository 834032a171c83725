"""Population statistics: hand-computed values, training-mode upstream, conv layout, the zoo, the command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnfold.models.recalibrate import recalibrate
from bnfold.models.zoo.catalog import trained
from bnfold.models.zoo.data import load_split
from bnfold.models.zoo.training import evaluate
from tests.models import tiny_nets
from tests.models.cli_helpers import bnfold

# Two mini-batches of m = 3 samples, two channels (a 7th sample is dropped: incomplete batch).
SAMPLES = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0], [4.0, -1.0], [6.0, 1.0], [8.0, 0.0], [100.0, 100.0]])
# By hand: channel 0 batch means 2, 6 and biased variances 2/3, 8/3 → μ = 4, σ² = 3/2 · (2/3 + 8/3)/2 = 2.5;
#          channel 1 batch means 1, 0 and biased variances 2, 2/3 → μ = 0.5, σ² = 3/2 · (2 + 2/3)/2 = 2.
HAND_MEAN, HAND_VAR = [4.0, 0.5], [2.5, 2.0]


def _bn(mean: list[float], var: list[float]) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(2).eval()
    bn.running_mean.copy_(torch.tensor(mean))
    bn.running_var.copy_(torch.tensor(var))
    return bn


def test_single_batchnorm_against_hand_computed_values() -> None:
    model = nn.Sequential(_bn([10.0, -3.0], [4.0, 9.0]))
    result = recalibrate(model, SAMPLES, batch_size=3)
    bn = result.model[0]
    assert bn.running_mean.tolist() == pytest.approx(HAND_MEAN, abs=1e-6)
    assert bn.running_var.tolist() == pytest.approx(HAND_VAR, abs=1e-6)
    assert not bn.training
    (shift,) = result.shifts
    assert shift.bn == "0"
    assert shift.mean_shift == pytest.approx(6.0 / np.sqrt(4.0 + 1e-5))  # |4 − 10| / √(4 + ε)
    assert (shift.var_ratio_min, shift.var_ratio_max) == pytest.approx((2.0 / 9.0, 2.5 / 4.0))
    assert model[0].running_mean.tolist() == [10.0, -3.0], "the caller's model must not change"


def test_not_the_variance_of_the_whole_set() -> None:
    """The estimate is the mean of per-batch statistics, not the (unbiased) variance over all samples."""
    result = recalibrate(nn.Sequential(_bn([0.0, 0.0], [1.0, 1.0])), SAMPLES[:6], batch_size=3)
    whole = SAMPLES[:6].var(dim=0, unbiased=True)  # channel 0: 6.8
    assert result.model[0].running_var[0].item() == pytest.approx(2.5, abs=1e-6)
    assert whole[0].item() == pytest.approx(6.8, abs=1e-5)


def test_upstream_batchnorm_normalises_with_batch_statistics() -> None:
    """The second BN sees the first one's training-mode output: per batch mean 0, biased variance v/(v + ε)."""
    model = nn.Sequential(_bn([10.0, -3.0], [4.0, 9.0]), _bn([0.0, 0.0], [5.0, 5.0]))
    second = recalibrate(model, SAMPLES, batch_size=3).model[1]
    eps = 1e-5
    expected_var = [1.5 * ((2 / 3) / (2 / 3 + eps) + (8 / 3) / (8 / 3 + eps)) / 2,
                    1.5 * (2 / (2 + eps) + (2 / 3) / (2 / 3 + eps)) / 2]  # fmt: skip
    assert second.running_mean.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert second.running_var.tolist() == pytest.approx(expected_var, abs=1e-6)


def test_conv_batchnorm_counts_every_position_per_channel() -> None:
    """BatchNorm2d: m = N·H·W values per channel; checked against numpy, old statistics randomised."""
    generator = torch.Generator().manual_seed(11)
    bn = tiny_nets.randomise_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), seed=11)[0]
    x = torch.randn(8, 3, 4, 5, generator=generator) * 3 + 1
    result = recalibrate(nn.Sequential(bn), x, batch_size=4)
    batches = x.double().numpy().reshape(2, 4, 3, 4, 5)
    means = batches.mean(axis=(1, 3, 4))  # (batches, C)
    variances = batches.var(axis=(1, 3, 4))
    m = 4 * 4 * 5
    np.testing.assert_allclose(result.model[0].running_mean.numpy(), means.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(result.model[0].running_var.numpy(), m / (m - 1) * variances.mean(axis=0), rtol=1e-6)


def test_batch_of_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        recalibrate(nn.Sequential(_bn([0.0, 0.0], [1.0, 1.0])), SAMPLES, batch_size=1)


def test_zoo_model_keeps_its_accuracy(zoo_cache_dir: Path, zoo_repository: Path) -> None:
    model = trained("digits_resnet", cache_dir=zoo_cache_dir)
    split = load_split("digits")
    result = recalibrate(model.model, torch.from_numpy(split.x_train), batch_size=64)
    assert [shift.bn for shift in result.shifts] == ["stem.1", "layer1.bn1", "layer1.bn2", "layer2.bn1",
                                                     "layer2.bn2", "layer2.shortcut.1"]  # fmt: skip
    assert evaluate(result.model, split.x_test, split.y_test, "classification")["test_accuracy"] >= 0.97


def test_command_reports_and_saves_weights_fold_and_export_accepts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, zoo_cache_dir: Path, zoo_repository: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("BNFOLD_CACHE_DIR", str(zoo_cache_dir))
    saved = tmp_path / "recalibrated.pt"
    ran = bnfold(capsys, "recalibrate", "--model", "zoo:breast_cancer_mlp", "--save", saved, "--json")
    assert ran.code == 0, ran.err
    summary = ran.json()
    assert [bn["bn"] for bn in summary["batchnorms"]] == ["input_norm", "body.1", "body.4"]
    assert summary["before"]["test_accuracy"] >= 0.95 and summary["after"]["test_accuracy"] >= 0.95
    state = torch.load(saved, weights_only=True)
    ran = bnfold(capsys, "fold-and-export", "--model", "zoo:breast_cancer_mlp", "--weights", saved,
                 "--name", "recalibrated", "--out", tmp_path / "repo", "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    manifest = json.loads((tmp_path / "repo" / "recalibrated" / "model.json").read_text())
    assert manifest["metrics"] == {}  # the zoo's metrics belong to the zoo's weights, not these
    assert manifest["provenance"]["weights_sha256"] == hashlib.sha256(saved.read_bytes()).hexdigest()
    original = trained("breast_cancer_mlp", cache_dir=zoo_cache_dir).model.state_dict()
    assert not torch.equal(state["input_norm.running_var"], original["input_norm.running_var"])
    assert torch.equal(state["body.0.weight"], original["body.0.weight"])  # only statistics change


def test_command_with_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "calibration.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(32, 3, 8, 8)).astype(np.float32))
    ran = bnfold(capsys, "recalibrate", "--model", "tests/models/tiny_nets.py:build", "--data", data,
                 "--batch-size", "8", "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    (bn,) = ran.json()["batchnorms"]
    assert bn["bn"] == "bn" and bn["var_ratio_min"] > 0
    ran = bnfold(capsys, "recalibrate", "--model", "tests/models/tiny_nets.py:build", "--data", data,
                 "--batch-size", "1")  # fmt: skip
    assert ran.code == 1
    assert ran.err.strip().splitlines() == [
        "bnfold recalibrate: batch size 1 is too small for BatchNorm statistics; use at least 2"
    ]
