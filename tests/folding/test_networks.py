"""ResNet-, MobileNetV2- and DenseNet-style networks (tests/nets/reference_nets.py, built locally) folded end
to end with random BN statistics: every BN accounted for, output within float32 rounding."""

from __future__ import annotations

import pytest
import torch

from bnfold.folding import Action
from tests.folding.helpers import check_fold, randn
from tests.nets.reference_nets import densenet_small, mobilenet_v2, randomize_batchnorm, resnet18


@pytest.mark.slow
def test_resnet18_folds_every_batchnorm_into_its_conv() -> None:
    model = randomize_batchnorm(resnet18(num_classes=10), seed=1)
    result = check_fold(model, (randn(2, 3, 32, 32),), remaining=0)
    assert result.report.count(Action.FOLDED_INTO_PREVIOUS) == 20
    assert result.report["layer2.0.downsample.1"].target == "layer2.0.downsample.0"
    assert result.report["layer4.1.bn2"].target == "layer4.1.conv2"
    assert result.report.max_output_error is not None


@pytest.mark.slow
def test_mobilenet_v2_folds_every_batchnorm_including_depthwise() -> None:
    model = randomize_batchnorm(mobilenet_v2(num_classes=10), seed=2)
    result = check_fold(model, (randn(2, 3, 32, 32),), remaining=0)
    assert result.report.summary() == "52/52 BatchNorm folded, 0 lowered, 0 kept"
    assert result.report["features.2.conv.1.1"].target == "features.2.conv.1.0"  # depthwise 3×3
    assert result.model.get_submodule("features.2.conv.1.0").groups == 96


@pytest.mark.slow
@pytest.mark.parametrize("lower", [True, False], ids=["lowered", "kept"])
def test_densenet_pre_activation_batchnorms_are_lowered_or_kept(lower: bool) -> None:
    """Pre-activation BNs follow a concatenation and precede a ReLU: no neighbour can absorb them."""
    model = randomize_batchnorm(densenet_small(num_classes=10), seed=3)
    result = check_fold(model, (randn(2, 3, 32, 32),), remaining=0 if lower else 15, lower_unfoldable=lower)
    assert result.report.count(Action.FOLDED_INTO_PREVIOUS) == 13  # stem + the 12 bottleneck BNs after their 1×1 conv
    assert result.report.count(Action.LOWERED if lower else Action.KEPT) == 15
    assert result.report.count(Action.KEPT if lower else Action.LOWERED) == 0
    entry = result.report["features.denseblock2.denselayer1.norm1"]
    assert entry.action is (Action.LOWERED if lower else Action.KEPT)
    assert "also feeds a call of cat" in (entry.reason or "")
    assert all(e.max_error is not None and e.max_error < 1e-4 for e in result.report)


def test_folded_network_output_matches_on_many_random_batches() -> None:
    model = randomize_batchnorm(resnet18(num_classes=10), seed=4)
    result = check_fold(model, (randn(1, 3, 32, 32),), remaining=0, other_batch=16)
    with torch.no_grad():
        x = randn(16, 3, 32, 32, seed=9)
        assert torch.equal(result.model(x).argmax(1), model(x).argmax(1))
