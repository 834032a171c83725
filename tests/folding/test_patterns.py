"""Every must-fold pattern of the PyTorch engine, with random BN statistics: BN count after folding, error against the
unfolded model, the caller's model unchanged (check_fold), and the report entry."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from bnfold.folding import Action
from tests.folding.helpers import check_fold, randn, randomise_batchnorm

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SPATIAL = {1: (11,), 2: (9, 8), 3: (6, 5, 7)}


def prepared(model: nn.Module, seed: int = 0) -> nn.Module:
    return randomise_batchnorm(model, seed).eval()


def sample(dims: int, channels: int, seed: int = 1) -> tuple[Tensor]:
    return (randn(3, channels, *SPATIAL[dims], seed=seed),)


CONV_CASES = {  # id: (c_in, c_out, conv kwargs)
    "plain": (4, 6, {"kernel_size": 3}),
    "stride2_pad1_bias": (4, 6, {"kernel_size": 3, "stride": 2, "padding": 1, "bias": True}),
    "dilation2_nobias": (4, 6, {"kernel_size": 3, "dilation": 2, "padding": 2, "bias": False}),
    "groups2": (4, 6, {"kernel_size": 3, "groups": 2, "padding": 1}),
    "depthwise": (6, 6, {"kernel_size": 3, "groups": 6, "padding": 1, "bias": False}),
    "same_padding": (4, 6, {"kernel_size": 3, "padding": "same"}),
    "reflect": (4, 6, {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"}),
    "replicate": (4, 6, {"kernel_size": 3, "padding": 2, "padding_mode": "replicate"}),
    "circular": (4, 6, {"kernel_size": 3, "padding": 1, "padding_mode": "circular", "bias": False}),
}


@pytest.mark.parametrize("dims", [1, 2, 3], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_conv_then_batchnorm_folds_into_the_conv(dims: int, case: str) -> None:
    c_in, c_out, kwargs = CONV_CASES[case]
    model = prepared(nn.Sequential(CONV[dims](c_in, c_out, **kwargs), BN[dims](c_out), nn.ReLU()))
    result = check_fold(model, sample(dims, c_in), remaining=0)
    entry = result.report["1"]
    assert (entry.action, entry.target, entry.reason) == (Action.FOLDED_INTO_PREVIOUS, "0", None)
    assert entry.max_error is not None and entry.max_error < 1e-5
    assert result.report.max_output_error is not None and result.report.max_output_error < 1e-5
    assert result.model.get_parameter("0.bias").shape == (c_out,)  # a bias-less conv gains one


CONV_T_CASES = {  # id: (c_in, c_out, kwargs)
    "plain": (4, 6, {"kernel_size": 3}),
    "stride2_outpad1": (4, 6, {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}),
    "groups2_nobias": (4, 6, {"kernel_size": 3, "groups": 2, "bias": False}),
    "groups4_cin_eq_cout": (8, 8, {"kernel_size": 2, "stride": 2, "groups": 4}),
    "depthwise_dilation2": (6, 6, {"kernel_size": 3, "groups": 6, "dilation": 2}),
}


@pytest.mark.parametrize("dims", [1, 2, 3], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("case", CONV_T_CASES, ids=list(CONV_T_CASES))
def test_conv_transpose_then_batchnorm_folds_per_group(dims: int, case: str) -> None:
    c_in, c_out, kwargs = CONV_T_CASES[case]
    model = prepared(nn.Sequential(CONV_T[dims](c_in, c_out, **kwargs), BN[dims](c_out)))
    result = check_fold(model, sample(dims, c_in), remaining=0)
    entry = result.report["1"]
    assert (entry.action, entry.target, entry.reason) == (Action.FOLDED_INTO_PREVIOUS, "0", None)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_then_batchnorm1d_folds_into_the_linear(bias: bool) -> None:
    model = prepared(nn.Sequential(nn.Linear(7, 5, bias=bias), nn.BatchNorm1d(5), nn.Tanh()))
    result = check_fold(model, (randn(4, 7),), remaining=0)
    entry = result.report["1"]
    assert (entry.action, entry.target, entry.reason) == (Action.FOLDED_INTO_PREVIOUS, "0", None)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_batchnorm1d_then_linear_folds_forward(bias: bool) -> None:
    model = prepared(nn.Sequential(nn.BatchNorm1d(7), nn.Linear(7, 5, bias=bias)))
    result = check_fold(model, (randn(4, 7),), remaining=0)
    entry = result.report["0"]
    assert (entry.action, entry.target, entry.reason) == (Action.FOLDED_INTO_NEXT, "1", None)


BN_CONV_CASES = {
    "no_padding": {"kernel_size": 3},
    "no_padding_groups2_stride2": {"kernel_size": 3, "groups": 2, "stride": 2, "bias": False},
    "reflect_padding": {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    "circular_padding_depthwise": {"kernel_size": 3, "padding": 1, "padding_mode": "circular", "groups": 4},
    "valid": {"kernel_size": 2, "padding": "valid"},
}


@pytest.mark.parametrize("dims", [1, 2, 3], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("case", BN_CONV_CASES, ids=list(BN_CONV_CASES))
def test_batchnorm_then_conv_without_zero_padding_folds_forward(dims: int, case: str) -> None:
    model = prepared(nn.Sequential(BN[dims](4), CONV[dims](4, 8, **BN_CONV_CASES[case])))
    result = check_fold(model, sample(dims, 4), remaining=0)
    entry = result.report["0"]
    assert (entry.action, entry.target, entry.reason) == (Action.FOLDED_INTO_NEXT, "1", None)


def test_batchnorm_without_affine_folds() -> None:
    model = prepared(nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5, affine=False)))
    result = check_fold(model, sample(2, 3), remaining=0)
    assert result.report["1"].action is Action.FOLDED_INTO_PREVIOUS


def test_two_batchnorms_in_a_row_both_fold_into_the_conv() -> None:
    model = prepared(nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5), nn.BatchNorm2d(5)))
    result = check_fold(model, sample(2, 3), remaining=0)
    assert [(e.bn, e.action, e.target) for e in result.report] == [
        ("1", Action.FOLDED_INTO_PREVIOUS, "0"),
        ("2", Action.FOLDED_INTO_PREVIOUS, "0"),
    ]
    # bn 1's output no longer exists: its error is measured where its effect ends, at bn 2's output
    assert all(e.max_error is not None and e.max_error < 1e-5 for e in result.report)


def test_two_batchnorms_at_the_input_become_one_scale_shift() -> None:
    model = prepared(nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm2d(3), nn.ReLU()))
    result = check_fold(model, sample(2, 3), remaining=0)
    first, second = result.report
    assert first.action is Action.LOWERED
    assert first.reason == (
        "not into the previous layer: the model input 'input_1' is not a layer module; "
        "not into the next layer: layer 1: BatchNorm2d has no fold rule in this direction"
    )
    assert (second.action, second.target) == (Action.FOLDED_INTO_PREVIOUS, "0_scale_shift")


class FunctionalBatchNorm(nn.Module):
    """conv → F.batch_norm with statistics held in this module's own buffers/parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        generator = torch.Generator().manual_seed(5)
        self.register_buffer("mean", torch.rand(6, generator=generator) - 0.5)
        self.register_buffer("var", torch.rand(6, generator=generator) + 0.3)
        self.gamma = nn.Parameter(torch.rand(6, generator=generator) * 2 - 1)
        self.beta = nn.Parameter(torch.rand(6, generator=generator) - 0.5)

    def forward(self, x: Tensor) -> Tensor:
        y = functional.batch_norm(self.conv(x), self.mean, self.var, self.gamma, self.beta, False, 0.1, 1e-3)
        return torch.relu(y)


def test_functional_batch_norm_with_buffer_statistics_folds() -> None:
    model = FunctionalBatchNorm().eval()
    result = check_fold(model, sample(2, 3), remaining=0)
    (entry,) = result.report
    assert (entry.bn, entry.action, entry.target) == ("batch_norm", Action.FOLDED_INTO_PREVIOUS, "conv")


class AtenBatchNorm(nn.Module):
    """Linear → torch.batch_norm (the ATen op: weight and bias come before the statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3)
        self.norm = nn.BatchNorm1d(3)  # only a holder of random statistics; its forward is not called

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm
        return torch.batch_norm(
            self.linear(x), n.weight, n.bias, n.running_mean, n.running_var, False, 0.1, n.eps, False
        )


def test_aten_batch_norm_call_folds() -> None:
    model = prepared(AtenBatchNorm())
    result = check_fold(model, (randn(4, 5),), remaining=0)
    (entry,) = result.report
    assert (entry.bn, entry.action, entry.target) == ("norm", Action.FOLDED_INTO_PREVIOUS, "linear")


class SharedBatchNorm(nn.Module):
    """One BN module called after two different convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv_a(x)) - self.bn(self.conv_b(x))


def test_batchnorm_called_twice_gets_one_entry_per_call_site() -> None:
    model = prepared(SharedBatchNorm())
    result = check_fold(model, sample(2, 3), remaining=0)
    assert [(e.bn, e.action, e.target) for e in result.report] == [
        ("bn", Action.FOLDED_INTO_PREVIOUS, "conv_a"),
        ("bn@bn_1", Action.FOLDED_INTO_PREVIOUS, "conv_b"),
    ]


class SharedConv(nn.Module):
    """One conv module called at two places, each call followed by its own BN."""

    def __init__(self, second_bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.bn_b = nn.BatchNorm2d(4) if second_bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        a = self.bn_a(self.conv(x))
        return self.bn_b(self.conv(torch.relu(a)))


def test_shared_conv_folds_per_call_site() -> None:
    """A conv called twice, each call with its own BN, folds into one copy per call site."""
    model = prepared(SharedConv())
    result = check_fold(model, sample(2, 4), remaining=0)
    first, second = result.report
    assert (first.action, second.action) == (Action.FOLDED_INTO_PREVIOUS, Action.FOLDED_INTO_PREVIOUS)
    assert first.target != second.target and {first.target, second.target} >= {"conv"}


def test_shared_conv_with_one_batchnorm_leaves_the_other_call_site_intact() -> None:
    """Only the call site followed by a BN uses fused weights; the bare one keeps the original."""
    model = prepared(SharedConv(second_bn=False))
    result = check_fold(model, sample(2, 4), remaining=0)
    (entry,) = result.report
    assert entry.action is Action.FOLDED_INTO_PREVIOUS and entry.target == "conv_bn_a"
    assert torch.equal(result.model.get_parameter("conv.weight"), model.conv.weight)


def test_sync_batchnorm_in_eval_mode_folds() -> None:
    """SyncBatchNorm only synchronises while training; in eval mode it is plain BN."""
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4)))
    result = check_fold(model, sample(2, 3), remaining=0)
    assert result.report["1"].action is Action.FOLDED_INTO_PREVIOUS
