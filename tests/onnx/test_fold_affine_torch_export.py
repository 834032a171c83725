"""A PyTorch net whose BN was replaced by explicit `x * s + t` with buffers, exported by the dynamo exporter
with optimize=False, folds to a graph without a single Mul, and equals the PyTorch net."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import pytest
import torch

from bnfold.folding.compare import Tolerance, discrepancy
from bnfold.folding.onnx_fold import fold_onnx
from bnfold.folding.report import Action
from tests.nets import frozen_batchnorm
from tests.onnx.ort_helpers import run_ort
from tests.onnx.scale_shift_nets import ScaleShiftNet


def export(model: torch.nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, optimize=False, input_names=["x"])
    assert program is not None
    return program.model_proto


@pytest.mark.parametrize("seed", [0, 1])
def test_explicit_scale_shift_export_folds_to_no_mul(seed: int) -> None:
    model = ScaleShiftNet(seed).eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 10))
    exported = export(model, x)
    assert [node.op_type for node in exported.graph.node].count("Mul") == 3
    result = fold_onnx(exported, {"x": x.numpy()})
    onnx.checker.check_model(result.model, full_check=True)
    assert [node.op_type for node in result.model.graph.node].count("Mul") == 0
    assert (result.report.folded, result.report.total) == (3, 3)
    assert [entry.kind for entry in result.report] == ["affine"] * 3
    assert [entry.action for entry in result.report] == [Action.FOLDED_INTO_PREVIOUS] * 3
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = run_ort(result.model, {"x": x.numpy()})
    gap = discrepancy(np.asarray(got), expected)
    assert gap.within(Tolerance(atol=1e-6, rtol=1e-5)), gap.describe()


@pytest.mark.parametrize(
    "factory", [frozen_batchnorm.build, frozen_batchnorm.build_scale_shift], ids=["frozen", "scale_shift"]
)
def test_frozen_batchnorm_backbone_export_folds_to_no_per_channel_mul(factory: object) -> None:
    """The detection-style backbone (stem, bottlenecks with a projection shortcut, every norm a FrozenBatchNorm2d)
    exported as it is: the ONNX engine folds every norm's Mul/Add, as the PyTorch engine does."""
    model = factory()  # type: ignore[operator]
    norms = len(frozen_batchnorm.frozen_norms(model))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    exported = export(model, x)
    assert [node.op_type for node in exported.graph.node].count("BatchNormalization") == 0
    result = fold_onnx(exported, {"x": x.numpy()})
    onnx.checker.check_model(result.model, full_check=True)
    assert [node.op_type for node in result.model.graph.node].count("Mul") == 0
    assert (result.report.folded, result.report.total) == (norms, norms)
    assert {entry.kind for entry in result.report} == {"affine"}
    other = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # not the calibration batch
    for batch in (x, other):
        (got,) = run_ort(result.model, {"x": batch.numpy()})
        with torch.no_grad():
            expected = model(batch).numpy()
        gap = discrepancy(np.asarray(got), expected)
        assert gap.within(Tolerance(atol=1e-6, rtol=1e-5)), gap.describe()
