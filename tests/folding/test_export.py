"""The folded model (a GraphModule with fused layers and ChannelScaleShift modules) exports to ONNX with the
project's exporter, keeps exactly the BNs the report says are kept, and computes the same outputs."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from bnfold.folding import Action, fold
from bnfold.folding.compare import discrepancy
from bnfold.folding.export import count_op, export_onnx
from tests.folding.helpers import FP32_REL, randn, randomise_batchnorm
from tests.onnx.ort_helpers import run_ort


class Block(nn.Module):
    """conv → BN (folds), a residual add → BN (lowered), then a BN without running statistics (kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.skip = nn.Conv2d(3, 4, 1)
        self.bn_after_add = nn.BatchNorm2d(4)
        self.bn_batch = nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn(self.conv(x))) + self.skip(x)
        return self.bn_batch(self.bn_after_add(y))


def test_folded_model_exports_with_only_the_kept_batchnorms() -> None:
    model = randomise_batchnorm(Block(), seed=21).eval()
    result = fold(model, (randn(2, 3, 6, 6),))
    assert [e.action for e in result.report] == [Action.FOLDED_INTO_PREVIOUS, Action.LOWERED, Action.KEPT]
    proto = export_onnx(result.model, (randn(2, 3, 6, 6),), input_names=["input"], output_names=["output"])
    assert count_op(proto, "BatchNormalization") == 1
    x = randn(5, 3, 6, 6, seed=4)  # another batch size than the export's
    (onnx_out,) = run_ort(proto, {"input": x.numpy()})
    with torch.no_grad():
        reference = model(x).numpy()
    assert discrepancy(np.asarray(onnx_out), reference).max_rel <= FP32_REL


def test_public_api_reexports_the_onnx_engine_lazily() -> None:
    from bnfold import folding
    from bnfold.folding import onnx_fold

    assert folding.fold_onnx is onnx_fold.fold_onnx and folding.OnnxFoldResult is onnx_fold.OnnxFoldResult
    assert set(folding.__all__) >= {"fold", "FoldResult", "FoldReport", "FoldEntry", "Action", "FoldingError"}
