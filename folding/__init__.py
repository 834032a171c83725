"""bnfold's folding engine: fold inference-time BatchNorm into neighbouring layers and report each one.

from bnfold.folding import fold, fold_onnx
result = fold(model, example_inputs)   # PyTorch: result.model (folded nn.Module), result.report
result = fold_onnx(onnx_model)         # ONNX (folding/onnx_fold.py), imported on first use
"""

from typing import Any

from bnfold.folding.compare import Discrepancy, Tolerance, discrepancy
from bnfold.folding.errors import BnfoldError, EquivalenceError, FoldingError
from bnfold.folding.report import Action, FoldEntry, FoldReport
from bnfold.folding.torch_fold import FoldResult, fold
from bnfold.folding.torch_scale_shift import ChannelScaleShift

__all__ = [
    "Action",
    "BnfoldError",
    "ChannelScaleShift",
    "Discrepancy",
    "EquivalenceError",
    "FoldEntry",
    "FoldReport",
    "FoldResult",
    "FoldingError",
    "OnnxFoldResult",
    "Tolerance",
    "count_op",
    "discrepancy",
    "export_onnx",
    "fold",
    "fold_onnx",
]

# The ONNX engine and the exporter pull in onnx and onnx-ir: loaded when first asked for.
_LAZY = {
    "fold_onnx": "bnfold.folding.onnx_fold",
    "OnnxFoldResult": "bnfold.folding.onnx_fold",
    "export_onnx": "bnfold.folding.export",
    "count_op": "bnfold.folding.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'folding' has no attribute {name!r}")
