"""Tests of the shared foundation: fold arithmetic, the comparison rule, the report, the `bnfold` dispatcher.

References are independent of folding/arithmetic.py: PyTorch evaluates the conv and then the BatchNorm.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnfold.cli.dispatch import main as bnfold_main
from bnfold.folding.arithmetic import batchnorm_scale_shift, compose, fold_into_next, fold_into_previous
from bnfold.folding.compare import Tolerance, discrepancy
from bnfold.folding.errors import FoldingError
from bnfold.folding.report import Action, FoldEntry, FoldReport


def _random_bn(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    """γ, β, μ, σ² all random (γ may be negative, σ² spread over four decades)."""
    return {
        "gamma": rng.normal(0.0, 2.0, channels),
        "beta": rng.normal(0.0, 1.0, channels),
        "mean": rng.normal(0.0, 3.0, channels),
        "var": 10.0 ** rng.uniform(-3, 1, channels),
    }


def _bn_torch(x: torch.Tensor, bn: dict[str, np.ndarray], eps: float) -> torch.Tensor:
    t = {k: torch.from_numpy(v) for k, v in bn.items()}
    return F.batch_norm(x, t["mean"], t["var"], t["gamma"], t["beta"], training=False, eps=eps)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
def test_fold_into_previous_conv_matches_conv_then_bn(groups: int, has_bias: bool) -> None:
    rng = np.random.default_rng(groups * 10 + has_bias)
    weight = rng.normal(size=(8, 8 // groups, 3, 3))
    bias = rng.normal(size=8) if has_bias else None
    bn = _random_bn(rng, 8)
    x = torch.from_numpy(rng.normal(size=(2, 8, 7, 7)))
    bias_t = None if bias is None else torch.from_numpy(bias)
    expected = _bn_torch(F.conv2d(x, torch.from_numpy(weight), bias_t, groups=groups), bn, 1e-5)

    new_w, new_b = fold_into_previous(weight, bias, batchnorm_scale_shift(**bn, eps=1e-5), groups=groups)
    actual = F.conv2d(x, torch.from_numpy(new_w), torch.from_numpy(new_b), groups=groups)

    assert new_w.shape == weight.shape
    assert discrepancy(actual.numpy(), expected.numpy()).max_rel < 1e-12


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_fold_into_previous_grouped_conv_transpose_with_square_channels(groups: int) -> None:
    """ConvTranspose weight is [C_in, C_out/groups, k…]; C_in == C_out hides an axis-0 bug."""
    rng = np.random.default_rng(groups)
    weight = rng.normal(size=(8, 8 // groups, 3, 3))
    bn = _random_bn(rng, 8)
    x = torch.from_numpy(rng.normal(size=(2, 8, 5, 5)))
    expected = _bn_torch(F.conv_transpose2d(x, torch.from_numpy(weight), groups=groups, stride=2), bn, 1e-3)

    new_w, new_b = fold_into_previous(
        weight, None, batchnorm_scale_shift(**bn, eps=1e-3), transposed=True, groups=groups
    )
    actual = F.conv_transpose2d(x, torch.from_numpy(new_w), torch.from_numpy(new_b), groups=groups, stride=2)

    assert discrepancy(actual.numpy(), expected.numpy()).max_rel < 1e-12


@pytest.mark.parametrize("groups", [1, 2])
def test_fold_into_next_conv_without_padding_matches_bn_then_conv(groups: int) -> None:
    """The next layer is scaled along its input-channel axis and its bias gains Σ W·t."""
    rng = np.random.default_rng(7 + groups)
    weight = rng.normal(size=(6, 4 // groups, 3, 3))
    bias = rng.normal(size=6)
    bn = _random_bn(rng, 4)
    x = torch.from_numpy(rng.normal(size=(3, 4, 6, 6)))
    expected = F.conv2d(_bn_torch(x, bn, 1e-5), torch.from_numpy(weight), torch.from_numpy(bias), groups=groups)

    new_w, new_b = fold_into_next(weight, bias, batchnorm_scale_shift(**bn, eps=1e-5), groups=groups)
    actual = F.conv2d(x, torch.from_numpy(new_w), torch.from_numpy(new_b), groups=groups)

    assert discrepancy(actual.numpy(), expected.numpy()).max_rel < 1e-12


def test_gamma_zero_and_tiny_variance_stay_finite() -> None:
    """γ = 0 is legal; σ² ≈ 0 with ε > 0 must not produce NaN or Inf."""
    affine = batchnorm_scale_shift(
        np.array([0.0, 1.0]), np.array([0.5, -0.5]), np.array([3.0, -2.0]), np.array([0.0, 1e-30]), 1e-5
    )
    weight, bias = fold_into_previous(np.ones((2, 1, 1)), None, affine)
    assert np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))
    assert weight[0, 0, 0] == 0.0 and bias[0] == 0.5


def test_nonpositive_variance_is_refused_with_a_fix() -> None:
    with pytest.raises(FoldingError, match="recalibrate"):
        batchnorm_scale_shift(None, None, np.zeros(2), np.array([-1.0, 1.0]), 1e-5)


def test_compose_two_batchnorms_equals_applying_both() -> None:
    rng = np.random.default_rng(3)
    first, second = _random_bn(rng, 5), _random_bn(rng, 5)
    x = torch.from_numpy(rng.normal(size=(4, 5)))
    expected = _bn_torch(_bn_torch(x, first, 1e-5), second, 1e-3).numpy()
    both = compose(batchnorm_scale_shift(**first, eps=1e-5), batchnorm_scale_shift(**second, eps=1e-3))
    actual = x.numpy() * both.scale + both.shift
    assert discrepancy(actual, expected).max_rel < 1e-12


def test_discrepancy_is_relative_to_reference_scale_and_flags_nan() -> None:
    reference = np.array([[0.0, 10.0], [-20.0, 1e-9]])
    candidate = reference + np.array([[0.0, 0.0], [0.0, 2e-4]])
    found = discrepancy(candidate, reference)
    assert found.where == (1, 1)
    assert found.max_abs == pytest.approx(2e-4)
    assert found.max_rel == pytest.approx(1e-5)
    assert found.within(Tolerance(atol=0.0, rtol=1.1e-5))
    assert not found.within(Tolerance(atol=0.0, rtol=0.9e-5))
    assert discrepancy(np.array([np.nan]), np.array([1.0])).max_abs == float("inf")


def test_report_round_trips_through_json_and_summarises() -> None:
    report = FoldReport(
        entries=[
            FoldEntry("a.bn", Action.FOLDED_INTO_PREVIOUS, target="a.conv", max_error=1e-7),
            FoldEntry("b.bn", Action.KEPT, reason="training mode"),
            FoldEntry("c.bn", Action.LOWERED, max_error=0.0),
        ],
        max_output_error=2e-7,
    )
    again = FoldReport.from_json(report.to_json())
    assert again == report
    assert report.summary() == "1/3 BatchNorm folded, 1 lowered, 1 kept"
    assert report["b.bn"].reason == "training mode"
    with pytest.raises(KeyError, match=r"a\.bn"):
        report["missing"]


def test_dispatcher_lists_commands_and_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert bnfold_main(["--help"]) == 0
    assert "fold-and-export" in capsys.readouterr().out
    assert bnfold_main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


CONSOLE_SCRIPT = str(Path(sys.executable).parent / "bnfold")


def test_console_script_is_installed() -> None:
    for command in ([CONSOLE_SCRIPT, "--help"], [sys.executable, "-m", "bnfold.cli", "--help"]):
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        assert completed.returncode == 0, completed.stderr
        assert "serve" in completed.stdout


def test_version_prints_the_project_version() -> None:
    expected = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]
    for command in ([CONSOLE_SCRIPT, "--version"], [sys.executable, "-m", "bnfold.cli", "-V"]):
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        assert (completed.returncode, completed.stdout, completed.stderr) == (0, f"bnfold {expected}\n", "")
