"""fold_onnx on models exported from PyTorch with BatchNorm kept (folding.export.export_onnx)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from bnfold.folding.compare import Tolerance, discrepancy
from bnfold.folding.export import count_op, export_onnx
from bnfold.folding.onnx_fold import fold_onnx
from bnfold.folding.report import Action
from tests.onnx.nets import ConvNet, MobileStyleNet
from tests.onnx.ort_helpers import randomise_batchnorm, run_ort

FP32 = Tolerance(atol=1e-6, rtol=1e-5)


def _export(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    return export_onnx(model, (example,), input_names=["input"], output_names=["output"])


def _agree_with_torch(model: nn.Module, folded: onnx.ModelProto, batch: torch.Tensor) -> None:
    with torch.no_grad():
        expected = model(batch).numpy()
    (actual,) = run_ort(folded, {"input": batch.numpy()})
    gap = discrepancy(actual, expected)
    assert gap.within(FP32), gap.describe()


@pytest.fixture(scope="module")
def mobile() -> tuple[MobileStyleNet, onnx.ModelProto]:
    torch.manual_seed(0)
    model = MobileStyleNet()
    randomise_batchnorm(model, seed=3)
    model.eval()
    return model, _export(model, torch.randn(2, 1, 8, 8))


def test_mobile_style_net_folds_back_forward_and_lowers(mobile: tuple[MobileStyleNet, onnx.ModelProto]) -> None:
    model, exported = mobile
    assert count_op(exported) == 9
    calibration = np.random.default_rng(1).standard_normal((6, 1, 8, 8)).astype(np.float32)
    result = fold_onnx(exported, {"input": calibration})
    onnx.checker.check_model(result.model, full_check=True)
    assert count_op(result.model) == 0
    counts = result.report.counts()
    assert counts == {"folded_into_previous": 6, "folded_into_next": 2, "lowered_to_scale_shift": 1, "kept": 0}
    assert count_op(result.model, "Mul") == 1
    forward_targets = sorted(str(e.target) for e in result.report if e.action is Action.FOLDED_INTO_NEXT)
    assert forward_targets == ["node_conv2d_6", "node_linear"]
    for batch in (1, 5):
        _agree_with_torch(
            model, result.model, torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        )
    assert result.report.max_output_error is not None and result.report.max_output_error < 1e-4
    assert all(e.max_error is not None and e.max_error < 1e-4 for e in result.report)


def test_fold_of_an_export_is_deterministic_and_leaves_the_export_alone(
    mobile: tuple[MobileStyleNet, onnx.ModelProto],
) -> None:
    _, exported = mobile
    before = exported.SerializeToString()
    first, second = fold_onnx(exported), fold_onnx(exported)
    assert exported.SerializeToString() == before
    assert first.model.SerializeToString() == second.model.SerializeToString()
    assert first.report.to_json() == second.report.to_json()


def test_convnet_with_grouped_conv_transpose_and_linear_folds_completely() -> None:
    torch.manual_seed(1)
    model = ConvNet()
    randomise_batchnorm(model, seed=4)
    model.eval()
    exported = _export(model, torch.randn(2, 3, 6, 6))
    result = fold_onnx(exported)
    onnx.checker.check_model(result.model, full_check=True)
    assert (count_op(exported), count_op(result.model)) == (3, 0)
    assert result.report.summary() == "3/3 BatchNorm folded, 0 lowered, 0 kept"
    assert [e.target for e in result.report] == ["node_conv2d", "node_convolution", "node_linear"]
    folded_names = {init.name for init in result.model.graph.initializer}
    assert {"conv.weight", "conv.bias", "up.weight", "up.bias", "head.weight", "head.bias"} <= folded_names
    assert not any(name.startswith(("bn.", "up_bn.", "head_bn.")) for name in folded_names)
    _agree_with_torch(model, result.model, torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0)))


def test_batch_statistics_bn_from_torch_is_kept() -> None:
    """track_running_stats=False exports statistics computed by ReduceMean from the batch: never folded."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    exported = _export(model, torch.randn(2, 3, 6, 6))
    result = fold_onnx(exported)
    assert count_op(result.model) == 1
    (entry,) = result.report
    assert entry.action is Action.KEPT and "is computed at run time, not a constant initializer" in str(entry.reason)
    _agree_with_torch(model, result.model, torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(2)))


class _ResidualThenZeroPad(nn.Module):
    """conv → bn → relu, plus a residual add of the conv's output (so the BN cannot go back), and a second
    BN feeding a zero-padded conv (so it cannot go forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)
        self.pad = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = torch.relu(self.bn(y)) + y
        return self.pad(self.bn2(z))


@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "kept"])
def test_both_engines_word_the_same_refusals_alike(lower: bool) -> None:
    """The PyTorch and the ONNX engine give the same fate and the same refusal wording (folding/plan.py)
    for a BN whose producer is also read by a residual add and a BN before a zero-padded conv."""
    from bnfold.folding import fold

    torch.manual_seed(0)
    model = _ResidualThenZeroPad()
    randomise_batchnorm(model, seed=5)
    model.eval()
    example = torch.randn(2, 3, 8, 8)
    by_torch = fold(model, (example,), lower_unfoldable=lower).report
    by_onnx = fold_onnx(_export(model, example), lower_unfoldable=lower).report
    assert len(by_torch) == len(by_onnx) == 2
    action = Action.LOWERED if lower else Action.KEPT
    phrases = [
        ("not into the previous layer: the output of ", "is needed elsewhere: ", "; folding would change what "
         "the other readers see; not into the next layer: "),
        ("not into the next layer: ", " pads with zeros (", "), so its border would receive the BN's shift "
         "instead of zero"),
    ]  # fmt: skip
    for torch_entry, onnx_entry, expected in zip(by_torch, by_onnx, phrases, strict=True):
        for entry in (torch_entry, onnx_entry):
            assert entry.action is action and entry.target is None
            reason = entry.reason or ""
            assert reason.startswith("not into the previous layer: ")
            assert all(phrase in reason for phrase in expected), reason
            assert reason.endswith("; not lowered: lowering is disabled") is not lower
