"""Regression tests for the ways the fold arithmetic and the report can go wrong: a grouped ConvTranspose
scaled on the wrong axis, γ = 0 or σ² ≈ 0 producing NaN, the forward bias not summed over the kernel,
half precision rounded twice, a BatchNorm missing from the report. The graph-level cases (shared modules,
batch statistics, subclasses, zero padding, axes that only line up by shape) are in test_patterns.py and
test_refusals.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bnfold.folding import Action, FoldReport, fold
from bnfold.folding.arithmetic import batchnorm_scale_shift
from bnfold.folding.compare import Tolerance, discrepancy
from bnfold.folding.torch_tensors import as_f64, rounded_tensor
from tests.folding.helpers import batchnorm_count, check_fold, randn, randomise_batchnorm


def scale_shift_of(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    assert bn.running_mean is not None and bn.running_var is not None
    affine = batchnorm_scale_shift(
        as_f64(bn.weight), as_f64(bn.bias), as_f64(bn.running_mean), as_f64(bn.running_var), bn.eps
    )
    return affine.scale, affine.shift


def test_grouped_conv_transpose_scales_output_channels_within_each_group() -> None:
    """ConvTranspose weight is [C_in, C_out/groups, k…]; with C_in == C_out scaling axis 0 would
    produce a weight of the right shape and the wrong values."""
    model = randomise_batchnorm(nn.Sequential(nn.ConvTranspose2d(6, 6, 3, groups=3), nn.BatchNorm2d(6))).eval()
    result = check_fold(model, (randn(2, 6, 5, 5),), remaining=0)
    scale, shift = scale_shift_of(model[1])
    weight = as_f64(model[0].weight).reshape(3, 2, 2, 3, 3)  # (groups, C_in/g, C_out/g, kh, kw)
    expected = (weight * scale.reshape(3, 1, 2, 1, 1)).reshape(6, 2, 3, 3)
    folded = as_f64(result.model.get_parameter("0.weight"))
    assert np.array_equal(folded, expected.astype(np.float32).astype(np.float64))
    axis0 = as_f64(model[0].weight) * scale.reshape(6, 1, 1, 1)
    assert not np.allclose(folded, axis0)  # the naive layout really differs
    assert np.array_equal(
        as_f64(result.model.get_parameter("0.bias")), (scale * as_f64(model[0].bias) + shift).astype(np.float32)
    )


@pytest.mark.parametrize("forward", [False, True], ids=["into_previous", "into_next"])
def test_zero_gamma_and_tiny_variance_stay_finite(forward: bool) -> None:
    """γ = 0 and σ² ≈ 0 are legal; no division by s happens, nothing becomes NaN or Inf."""
    bn = nn.BatchNorm2d(4)
    layers = [bn, nn.Conv2d(4, 3, 1)] if forward else [nn.Conv2d(3, 4, 3), bn]
    model = randomise_batchnorm(nn.Sequential(*layers), seed=7).eval()
    with torch.no_grad():
        bn.weight[:2] = 0.0
        bn.running_var[2:] = 1e-30
    result = check_fold(model, (randn(2, 4 if forward else 3, 6, 6),), remaining=0)
    target = result.model.get_submodule("1" if forward else "0")
    assert torch.isfinite(target.weight).all() and torch.isfinite(target.bias).all()
    zeroed = target.weight[:, :2] if forward else target.weight[:2]
    assert torch.count_nonzero(zeroed) == 0  # W'[:, c] = W[:, c]·s_c with s_c = 0 (or W'[c] for previous)
    assert result.report.entries[0].action is (Action.FOLDED_INTO_NEXT if forward else Action.FOLDED_INTO_PREVIOUS)


def test_forward_bias_sums_the_shift_over_the_kernel() -> None:
    """b'_o = b_o + Σ_{c,k} W[o, c, k]·t_c, checked against an explicit float64 sum."""
    model = randomise_batchnorm(nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3)), seed=8).eval()
    result = check_fold(model, (randn(2, 4, 7, 7),), remaining=0)
    scale, shift = scale_shift_of(model[0])
    weight = as_f64(model[1].weight)
    expected_bias = as_f64(model[1].bias) + np.einsum("ockl,c->o", weight, shift)
    assert np.allclose(as_f64(result.model.get_parameter("1.bias")), expected_bias, rtol=1e-6, atol=1e-7)
    expected_weight = weight * scale.reshape(1, 4, 1, 1)
    assert np.array_equal(as_f64(result.model.get_parameter("1.weight")), expected_weight.astype(np.float32))


def test_batchnorm_with_zero_variance_and_zero_eps_is_kept() -> None:
    """σ² + ε = 0: the BN itself divides by zero, so no fused weight could reproduce it; kept, with the fix."""
    model = randomise_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=0.0))).eval()
    with torch.no_grad():
        model[1].running_var[1] = 0.0
    result = fold(model, (randn(2, 3, 6, 6),))
    assert result.report["1"].action is Action.KEPT
    assert "running_var + eps is not positive" in (result.report["1"].reason or "")


def bf16_reference(values: np.ndarray) -> np.ndarray:
    """Round float64 to bfloat16 (8 significant bits, nearest-even), independently of torch."""
    mantissa, exponent = np.frexp(values)
    return np.ldexp(np.round(mantissa * 256) / 256, exponent)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_models_keep_their_dtype_and_are_rounded_once(dtype: torch.dtype) -> None:
    """Fused tensors are computed in float64 and rounded once to the parameter dtype."""
    model = randomise_batchnorm(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)), seed=9)
    model = model.eval().to(dtype)
    x = randn(2, 8, 6, 6).to(dtype)
    result = fold(model, (x,))
    assert batchnorm_count(result.model) == 0
    fused = result.model.get_parameter("0.weight")
    assert fused.dtype == dtype and result.model.get_parameter("0.bias").dtype == dtype
    scale, _ = scale_shift_of(model[1])
    exact = as_f64(model[0].weight) * scale.reshape(-1, 1, 1, 1)
    rounded = exact.astype(np.float16).astype(np.float64) if dtype == torch.float16 else bf16_reference(exact)
    assert np.array_equal(as_f64(fused), rounded)
    with torch.no_grad():
        folded, unfolded = result.model(x), model(x)
    assert folded.dtype == dtype
    assert discrepancy(as_f64(folded), as_f64(unfolded)).within(Tolerance.for_dtype(str(dtype)))


def test_rounding_is_single_even_where_torch_rounds_twice() -> None:
    """Torch converts float64 → float16 via float32; 1 + 2⁻¹¹ + 2⁻⁴⁰ must round up, not to 1."""
    value = np.array([1 + 2**-11 + 2**-40])
    assert torch.from_numpy(value).to(torch.float16).item() == 1.0  # torch's double rounding
    assert rounded_tensor(value, torch.float16, torch.device("cpu")).item() == 1 + 2**-10
    assert rounded_tensor(np.array([1 + 2**-8 + 2**-40]), torch.bfloat16, torch.device("cpu")).item() == 1 + 2**-7


class Mixed(nn.Module):
    """One BN of each fate: folded into previous, folded into next, lowered, kept."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn_prev = nn.BatchNorm2d(4)
        self.bn_next = nn.BatchNorm2d(4)
        self.pointwise = nn.Conv2d(4, 4, 1)
        self.bn_lowered = nn.BatchNorm2d(4)
        self.bn_batch_stats = nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn_prev(self.conv(x)))
        y = self.pointwise(self.bn_next(y))
        return self.bn_batch_stats(torch.sigmoid(self.bn_lowered(y + 1)))


def test_every_batchnorm_is_in_the_report_with_its_fate() -> None:
    """Each BN is reported as folded (into what), lowered or kept, with the reason when not folded."""
    model = randomise_batchnorm(Mixed(), seed=12).eval()
    result = check_fold(model, (randn(3, 3, 7, 7),), remaining=1)
    fates = [(e.bn, e.action, e.target) for e in result.report]
    assert fates == [
        ("bn_prev", Action.FOLDED_INTO_PREVIOUS, "conv"),
        ("bn_next", Action.FOLDED_INTO_NEXT, "pointwise"),
        ("bn_lowered", Action.LOWERED, None),
        ("bn_batch_stats", Action.KEPT, None),
    ]
    assert [e.reason is None for e in result.report] == [True, True, False, False]
    errors = [e.max_error for e in result.report]
    assert all(error is not None and error < 1e-5 for error in errors[:3])
    assert errors[3] is not None and errors[3] < 1e-4  # batch statistics amplify the upstream rounding
    assert result.report.summary() == "2/4 BatchNorm folded, 1 lowered, 1 kept"
    assert FoldReport.from_json(result.report.to_json()) == result.report
