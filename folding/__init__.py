"""bnfold's folding engine: fold inference-time BatchNorm into neighbouring layers and report each one.

from folding import fold, fold_onnx
result = fold(model, example_inputs)   # PyTorch: result.model (folded nn.Module), result.report
result = fold_onnx(onnx_model)         # ONNX (folding/onnx_fold.py), imported on first use
"""

from typing import Any

from folding.errors import BnfoldError, EquivalenceError, FoldingError
from folding.report import Action, FoldEntry, FoldReport
from folding.torch_fold import FoldResult, fold
from folding.torch_scale_shift import ChannelScaleShift

__all__ = [
    "Action",
    "BnfoldError",
    "ChannelScaleShift",
    "EquivalenceError",
    "FoldEntry",
    "FoldReport",
    "FoldResult",
    "FoldingError",
    "OnnxFoldResult",
    "fold",
    "fold_onnx",
]

_LAZY = {"fold_onnx", "OnnxFoldResult"}  # the ONNX engine pulls in onnx and onnx-ir: loaded when asked for


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from folding import onnx_fold

        return getattr(onnx_fold, name)
    raise AttributeError(f"module 'folding' has no attribute {name!r}")
