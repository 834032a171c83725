"""bnfold's folding engine: fold inference-time BatchNorm into neighbouring layers and report each one.

from folding import fold
result = fold(model, example_inputs)   # result.model: folded nn.Module; result.report: FoldReport
"""

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
    "fold",
]
