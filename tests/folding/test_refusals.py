"""Must-not-fold cases of the PyTorch engine: each BN stays (kept, or lowered to a per-channel scale/shift when it
computes a fixed affine map), the report gives the reason, and the output is unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from bnfold.folding import Action, FoldingError, fold
from bnfold.folding.torch_scale_shift import ChannelScaleShift
from tests.folding.helpers import (
    FP32_REL,
    assert_unchanged,
    batchnorm_count,
    check_fold,
    randn,
    randomise_batchnorm,
    relative_error,
    snapshot,
)


def prepared(model: nn.Module) -> nn.Module:
    return randomise_batchnorm(model, seed=3).eval()


def test_batchnorm_without_running_statistics_is_kept() -> None:
    """track_running_stats=False normalises with batch statistics even in eval mode."""
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)))
    result = check_fold(model, (randn(4, 3, 8, 8),), remaining=1)
    entry = result.report["1"]
    assert (entry.action, entry.target) == (Action.KEPT, None)
    assert entry.reason is not None and entry.reason.startswith("track_running_stats=False")


def test_batchnorm_in_training_mode_is_kept() -> None:
    """A BN left in training mode uses batch statistics; it is kept and its statistics untouched."""
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)))
    model[1].train()
    before = snapshot(model)
    x = randn(4, 3, 8, 8)
    result = fold(model, (x,))
    assert_unchanged(model, before, 2)
    assert batchnorm_count(result.model) == 1
    kept, folded = result.report
    assert kept.action is Action.KEPT and "training mode" in (kept.reason or "")
    assert "call model.eval()" in (kept.reason or "")
    assert folded.action is Action.FOLDED_INTO_PREVIOUS
    folded_state = result.model.state_dict()
    for name in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):  # measuring updated nothing
        assert torch.equal(folded_state[name], before[name])
    reference = copy.deepcopy(model)  # running the training-mode original would update the caller's stats
    assert relative_error(result.model, reference, x) <= FP32_REL


def test_whole_model_in_training_mode_keeps_every_batchnorm() -> None:
    """Nothing folds when the caller forgot model.eval()."""
    model = randomise_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    result = fold(model, (randn(4, 3, 8, 8),))
    assert [e.action for e in result.report] == [Action.KEPT]
    assert batchnorm_count(result.model) == 1


class Residual(nn.Module):
    """conv output feeds both the BN and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return torch.relu(self.bn(y)) + y


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "kept"])
def test_producer_feeding_a_residual_add_is_not_folded(lower: bool) -> None:
    """Folding into a conv whose output also feeds an add would change what the add sees."""
    model = prepared(Residual())
    result = check_fold(model, (randn(2, 4, 6, 6),), remaining=0 if lower else 1, lower_unfoldable=lower)
    entry = result.report["bn"]
    assert entry.action is (Action.LOWERED if lower else Action.KEPT)
    assert entry.target is None
    assert "not into the previous layer: the output of layer conv is needed elsewhere: it also feeds a call of add" in (
        entry.reason or ""
    )
    assert "folding would change what the other readers see" in (entry.reason or "")
    assert "a call of relu" in (entry.reason or "")  # why the next layer could not take it either
    assert torch.equal(result.model.get_parameter("conv.weight"), model.conv.weight)
    if lower:
        assert isinstance(result.model.get_submodule("bn_scale_shift"), ChannelScaleShift)


def test_batchnorm_then_zero_padded_conv_is_not_folded_forward() -> None:
    """The zero-padded border of the next conv would receive the BN's shift instead of zero."""
    model = prepared(nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 5, 3, padding=1)))
    result = check_fold(model, (randn(2, 4, 6, 6),), remaining=1, lower_unfoldable=False)
    entry = result.report["0"]
    assert entry.action is Action.KEPT
    assert (
        "not into the next layer: layer 1: the conv pads with zeros (padding=(1, 1)), so its border would "
        "receive the BN's shift instead of zero" in (entry.reason or "")
    )
    assert torch.equal(result.model.get_parameter("1.weight"), model[1].weight)


class BatchNormReLU(nn.BatchNorm2d):
    """A BatchNorm2d subclass that also applies ReLU, as model libraries ship."""

    def forward(self, input: Tensor) -> Tensor:
        return torch.relu(super().forward(input))


class BatchNormReLUIfPositive(nn.BatchNorm2d):
    """A subclass whose extra behaviour depends on tensor values: torch.fx cannot trace it."""

    def forward(self, input: Tensor) -> Tensor:
        output = super().forward(input)
        return torch.relu(output) if output.mean() > 0 else output


class RenamedBatchNorm(nn.BatchNorm2d):
    """A subclass that adds nothing to forward: provably plain BN."""

    label = "renamed"


def test_batchnorm_subclass_with_an_activation_folds_and_keeps_the_activation() -> None:
    """Matching on isinstance would fold away the ReLU. The subclass is traced through instead, so the
    ReLU is a graph node of its own: the BN folds into the conv and the ReLU stays (outputs are negative
    without it: β and γ are random with both signs)."""
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormReLU(4)))
    x = randn(2, 3, 6, 6)
    with torch.no_grad():
        assert (model[1].__class__.__bases__[0].forward(model[1], model[0](x)) < 0).any()
    result = check_fold(model, (x,), remaining=0)
    entry = result.report["1"]
    assert (entry.action, entry.target) == (Action.FOLDED_INTO_PREVIOUS, "0")
    relus = [n for n in result.model.graph.nodes if n.op == "call_function" and n.target is torch.relu]
    assert len(relus) == 1


def test_batchnorm_subclass_with_untraceable_forward_is_kept() -> None:
    """When the subclass's forward cannot be traced, its behaviour cannot be proven: kept."""
    layers = [nn.Conv2d(3, 4, 3), BatchNormReLUIfPositive(4), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)]
    model = prepared(nn.Sequential(*layers))
    result = check_fold(model, (randn(2, 3, 6, 6),), remaining=1)
    entry = result.report["1"]
    assert entry.action is Action.KEPT
    assert (entry.reason or "").startswith(
        "BatchNormReLUIfPositive subclasses BatchNorm2d but overrides forward, which torch.fx could not trace"
    )
    assert result.report["3"].action is Action.FOLDED_INTO_PREVIOUS  # the rest of the model still folds


def test_batchnorm_subclass_with_plain_forward_folds() -> None:
    """A subclass that does not override forward is plain BN and folds as a module."""
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), RenamedBatchNorm(4)))
    result = check_fold(model, (randn(2, 3, 6, 6),), remaining=0)
    assert result.report["1"].action is Action.FOLDED_INTO_PREVIOUS


class TokenLinear(nn.Module):
    """Linear over the last axis of (N, L, C), then BatchNorm1d(L): the BN normalises axis 1 = L."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: Tensor) -> Tensor:  # (N, 4, 4) → (N, 4, 4)
        return self.bn(self.linear(x))


def test_linear_on_3d_input_then_batchnorm1d_is_not_folded() -> None:
    """With L == features the shapes line up, but the BN's channel axis is not the Linear's."""
    model = prepared(TokenLinear())
    result = check_fold(model, (randn(3, 4, 4),), remaining=0)
    entry = result.report["bn"]
    assert entry.action is Action.LOWERED
    assert "the Linear's output is 3-D, so BatchNorm1d normalises its axis 1" in (entry.reason or "")


def test_batchnorm1d_on_sequence_then_linear_is_not_folded_forward() -> None:
    """BatchNorm1d over (N, C, L) followed by a Linear over L cannot fold into the Linear."""
    model = prepared(nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3)))
    result = check_fold(model, (randn(2, 5, 5),), remaining=1, lower_unfoldable=False)
    assert "the BN output is 3-D" in (result.report["0"].reason or "")


class StandardisedConv(nn.Conv2d):
    """Weight-standardised conv: its forward rescales the weight, so W·s would be undone."""

    def forward(self, input: Tensor) -> Tensor:
        weight = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / self.weight.std((1, 2, 3), keepdim=True)
        return self._conv_forward(input, weight, self.bias)


def test_conv_subclass_with_custom_forward_is_not_folded_into() -> None:
    """Only exact layer types are folded into; a custom conv is traced through."""
    model = prepared(nn.Sequential(StandardisedConv(3, 4, 3), nn.BatchNorm2d(4)))
    result = check_fold(model, (randn(2, 3, 6, 6),), remaining=1, lower_unfoldable=False)
    assert "a call of conv2d" in (result.report["1"].reason or "")


def test_batchnorm_with_nan_statistics_is_kept_with_the_fix() -> None:
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with torch.no_grad():
        model[1].running_var[2] = float("nan")
    result = fold(model, (randn(2, 3, 6, 6),))
    entry = result.report["1"]
    assert entry.action is Action.KEPT
    assert entry.reason == "BatchNorm var holds NaN or Inf; re-estimate the statistics first"


def test_layer_with_a_forward_hook_is_not_folded_into() -> None:
    """A hook changing the conv's output (here + 1) would run after the fused conv: s·z + t + 1 ≠ s·(z + 1) + t."""
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    model[0].register_forward_hook(lambda module, args, output: output + 1)
    result = check_fold(model, (randn(2, 3, 6, 6),), remaining=0)
    entry = result.report["1"]
    assert entry.action is Action.LOWERED
    assert "layer 0: it has forward hooks (e.g. torch.nn.utils.weight_norm)" in (entry.reason or "")


def test_weight_norm_model_that_cannot_be_copied_gives_a_one_line_error() -> None:
    model = prepared(nn.Sequential(torch.nn.utils.weight_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4)))
    with pytest.raises(FoldingError) as raised:
        fold(model, (randn(2, 3, 6, 6),))
    message = str(raised.value)
    assert message.startswith("cannot deep-copy Sequential (RuntimeError: ") and "\n" not in message
    assert message.endswith("fold never mutates the caller's model, so the model must support copy.deepcopy")


def test_batchnorm_with_a_forward_hook_is_kept() -> None:
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    seen: list[int] = []
    model[1].register_forward_hook(lambda module, args, output: seen.append(output.shape[0]))
    result = check_fold(model, (randn(2, 3, 6, 6),), remaining=1)
    assert result.report["1"].action is Action.KEPT
    assert (result.report["1"].reason or "").startswith("it has forward hooks, which would no longer run")


def test_batchnorm_then_conv_transpose_is_not_folded_forward() -> None:
    model = prepared(nn.Sequential(nn.BatchNorm2d(4), nn.ConvTranspose2d(4, 3, 3, stride=2)))
    result = check_fold(model, (randn(2, 4, 5, 5),), remaining=0)
    entry = result.report["0"]
    assert entry.action is Action.LOWERED
    assert "; not into the next layer: layer 1: a transposed conv sums a position-dependent subset" in (
        entry.reason or ""
    )


class UnbatchedConvThenBatchNorm(nn.Module):
    """Conv1d on unbatched (C_in, L) gives (C_out, L); BatchNorm1d(L) then normalises axis 1 = L."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 1)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: Tensor) -> Tensor:  # (3, 4) → (4, 4)
        return self.bn(self.conv(x))


def test_unbatched_conv_then_batchnorm_is_not_folded_into_the_conv() -> None:
    """With L == C_out the shapes line up, but the BN's axis 1 is L, not the conv's channels."""
    model = prepared(UnbatchedConvThenBatchNorm())
    x = randn(3, 4)
    before, count_before = snapshot(model), batchnorm_count(model)
    result = fold(model, (x,), lower_unfoldable=False)
    entry = result.report["bn"]
    assert entry.action is Action.KEPT
    assert "the conv's output is 2-D, not the batched 3-D (N, C, …) layout" in (entry.reason or "")
    assert batchnorm_count(result.model) == 1
    assert relative_error(result.model, model, x) <= FP32_REL
    assert_unchanged(model, before, count_before)


def test_unbatched_conv2d_then_batchnorm1d_is_lowered_not_folded() -> None:
    model = prepared(nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm1d(5)))
    x = randn(3, 5, 6)  # conv output (5, 5, 6): BatchNorm1d sees N=5, C=5, L=6
    result = fold(model, (x,))
    entry = result.report["1"]
    assert entry.action is Action.LOWERED
    assert "the conv's output is 3-D, not the batched 4-D" in (entry.reason or "")
    assert relative_error(result.model, model, x) <= FP32_REL


def test_batchnorm_then_unbatched_conv_is_not_folded_forward() -> None:
    """Folding forward: BatchNorm1d(4) on (4, L=4) normalises L, while the unbatched Conv1d(4, …) reads
    axis 0 as its channels."""
    model = prepared(nn.Sequential(nn.BatchNorm1d(4), nn.Conv1d(4, 2, 1)))
    x = randn(4, 4)
    result = fold(model, (x,), lower_unfoldable=False)
    entry = result.report["0"]
    assert entry.action is Action.KEPT
    assert "the conv's input is 2-D, not the batched 3-D (N, C, …) layout" in (entry.reason or "")
    assert batchnorm_count(result.model) == 1
    assert relative_error(result.model, model, x) <= FP32_REL


def test_batched_conv1d_with_length_equal_to_channels_still_folds_both_ways() -> None:
    """The refusal is about the layout only: the same layers on batched input fold."""
    model = prepared(
        nn.Sequential(nn.Conv1d(3, 4, 1), nn.BatchNorm1d(4), nn.ReLU(), nn.BatchNorm1d(4), nn.Conv1d(4, 2, 1))
    )
    result = check_fold(model, (randn(2, 3, 4),), remaining=0, lower_unfoldable=False)
    assert result.report["1"].action is Action.FOLDED_INTO_PREVIOUS
    assert result.report["3"].action is Action.FOLDED_INTO_NEXT
