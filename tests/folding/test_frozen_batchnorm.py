"""FrozenBatchNorm2d backbones (detection-style ResNets) fold completely: their x·scale + shift chains are
recognised structurally, folded into the convs by the BatchNorm maths, and reported with kind and sources."""

from __future__ import annotations

import operator

import numpy as np
import pytest
import torch
from torch import fx

from bnfold.folding import fold
from bnfold.folding.arithmetic import batchnorm_scale_shift
from bnfold.folding.report import Action, FoldReport
from tests.folding.helpers import FP32_REL
from tests.nets.frozen_batchnorm import (
    FrozenBackbone,
    FrozenBatchNorm2d,
    ScaleShiftBatchNorm2d,
    frozen_norms,
    randomise_frozen,
)

SPELLINGS = {"torchvision": FrozenBatchNorm2d, "scale_shift": ScaleShiftBatchNorm2d}
KINDS = {"torchvision": "frozen_batchnorm", "scale_shift": "affine"}


def multiplies(graph_module: fx.GraphModule) -> int:
    """Tensor multiplies left in the folded graph (a frozen BN that did not fold leaves one)."""
    return sum(
        node.target in (operator.mul, torch.mul) or (node.op == "call_method" and node.target == "mul")
        for node in graph_module.graph.nodes
    )


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_frozen_backbone_folds_every_frozen_norm_and_keeps_its_outputs(spelling: str, seed: int) -> None:
    model = randomise_frozen(FrozenBackbone(SPELLINGS[spelling]), seed=seed).eval()
    norms = frozen_norms(model)
    result = fold(model, (torch.randn(2, 3, 32, 32),))

    assert len(norms) == 15  # stem, 4 blocks × 3, 2 projection shortcuts
    assert multiplies(result.model) == 0
    assert sorted(entry.bn for entry in result.report) == sorted(name for name, _ in norms)
    assert result.report.count(Action.FOLDED_INTO_PREVIOUS) == 15
    assert {entry.kind for entry in result.report} == {KINDS[spelling]}
    for entry in result.report:  # each frozen BN went into the conv just before it
        assert entry.target == entry.bn.replace("bn", "conv").replace("downsample.1", "downsample.0")
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed + batch))
        with torch.no_grad():
            expected, actual = model(x), result.model(x)
        assert actual.shape == (batch, 5)
        assert (actual - expected).abs().max() <= FP32_REL * expected.abs().max()


def test_report_entries_name_kind_sources_target_and_error() -> None:
    model = randomise_frozen(FrozenBackbone(), seed=7).eval()
    result = fold(model, (torch.randn(2, 3, 32, 32),))
    stem, shortcut = result.report["bn1"], result.report["layer1.0.downsample.1"]

    assert (stem.kind, stem.action, stem.target, stem.sources) == (
        "frozen_batchnorm",
        Action.FOLDED_INTO_PREVIOUS,
        "conv1",
        ("mul", "add"),
    )
    assert (shortcut.kind, shortcut.target, shortcut.sources) == (
        "frozen_batchnorm",
        "layer1.0.downsample.0",
        ("mul_1", "add_1"),
    )
    for entry in result.report:
        assert entry.reason is None
        assert entry.max_error is not None and 0.0 <= entry.max_error < 1e-5
        assert len(entry.sources) == 2
    data = result.report.to_json()
    assert data["entries"][0]["kind"] == "frozen_batchnorm" and data["entries"][0]["sources"] == ["mul", "add"]
    assert FoldReport.from_json(data).entries == result.report.entries


def test_folded_stem_weight_is_the_batchnorm_fold_of_the_frozen_statistics() -> None:
    """The stem conv's new weight is W·s with s from the BN formula on the frozen buffers (float64)."""
    model = randomise_frozen(FrozenBackbone(), seed=2).eval()
    result = fold(model, (torch.randn(2, 3, 32, 32),))
    norm = model.bn1
    affine = batchnorm_scale_shift(
        norm.weight.double().numpy(),
        norm.bias.double().numpy(),
        norm.running_mean.double().numpy(),
        norm.running_var.double().numpy(),
        norm.eps,
    )
    conv = result.model.get_submodule("conv1")
    expected = model.conv1.weight.detach().double().numpy() * affine.scale[:, None, None, None]
    np.testing.assert_allclose(conv.weight.detach().double().numpy(), expected, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(conv.bias.detach().double().numpy(), affine.shift, rtol=2e-6, atol=1e-6)
    assert model.conv1.bias is None  # the caller's model is untouched


def test_backbone_mixing_batchnorm_and_frozen_batchnorm_reports_both_kinds() -> None:
    model = randomise_frozen(FrozenBackbone(), seed=4)
    model.bn1 = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.3, 2.0)
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.uniform_(-1, 1)
    model.eval()
    result = fold(model, (torch.randn(2, 3, 32, 32),))

    kinds = [entry.kind for entry in result.report]
    assert kinds.count("batchnorm") == 1 and kinds.count("frozen_batchnorm") == 14
    assert result.report["bn1"].kind == "batchnorm" and result.report["bn1"].sources == ()
    assert multiplies(result.model) == 0
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert (result.model(x) - expected).abs().max() <= FP32_REL * expected.abs().max()
