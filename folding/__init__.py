"""bnfold's folding engine: fold inference-time BatchNorm into neighbouring layers and report each one.

from bnfold.folding import fold, fold_onnx
result = fold(model, example_inputs)   # PyTorch (folding/torch_fold.py)
result = fold_onnx(onnx_model)         # ONNX (folding/onnx_fold.py)
result = fold_onnx_file(path)          # ONNX file of any size, external data memory-mapped

Every public name is loaded on first use (PEP 562), so `from bnfold.folding import FoldReport, Tolerance`
imports neither torch nor onnx: only `fold`, `FoldResult` and `ChannelScaleShift` need torch, and only
`fold_onnx`, `fold_onnx_file`, `OnnxFoldResult`, `OnnxFileFoldResult` and `export_onnx` need onnx / onnx-ir.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnfold.contract.op_count import count_op
    from bnfold.folding.compare import Discrepancy, Tolerance, discrepancy
    from bnfold.folding.errors import BnfoldError, FoldingError
    from bnfold.folding.export import export_onnx
    from bnfold.folding.onnx_fold import OnnxFileFoldResult, OnnxFoldResult, fold_onnx, fold_onnx_file
    from bnfold.folding.report import Action, FoldEntry, FoldReport
    from bnfold.folding.torch_fold import FoldResult, fold
    from bnfold.folding.torch_scale_shift import ChannelScaleShift

# public name → the module that defines it
_HOME: dict[str, str] = {
    "Action": "bnfold.folding.report",
    "FoldEntry": "bnfold.folding.report",
    "FoldReport": "bnfold.folding.report",
    "BnfoldError": "bnfold.folding.errors",
    "FoldingError": "bnfold.folding.errors",
    "Discrepancy": "bnfold.folding.compare",
    "Tolerance": "bnfold.folding.compare",
    "discrepancy": "bnfold.folding.compare",
    "fold": "bnfold.folding.torch_fold",
    "FoldResult": "bnfold.folding.torch_fold",
    "ChannelScaleShift": "bnfold.folding.torch_scale_shift",
    "fold_onnx": "bnfold.folding.onnx_fold",
    "OnnxFoldResult": "bnfold.folding.onnx_fold",
    "fold_onnx_file": "bnfold.folding.onnx_fold",
    "OnnxFileFoldResult": "bnfold.folding.onnx_fold",
    "export_onnx": "bnfold.folding.export",
    "count_op": "bnfold.contract.op_count",
}

__all__ = [
    "Action",
    "BnfoldError",
    "ChannelScaleShift",
    "Discrepancy",
    "FoldEntry",
    "FoldReport",
    "FoldResult",
    "FoldingError",
    "OnnxFileFoldResult",
    "OnnxFoldResult",
    "Tolerance",
    "count_op",
    "discrepancy",
    "export_onnx",
    "fold",
    "fold_onnx",
    "fold_onnx_file",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'bnfold.folding' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
