"""Evaluate constant sub-expressions of an ONNX graph, never touching BatchNormalization.

PyTorch's dynamo exporter with optimize=False writes the zero bias of a `bias=False` conv as
Expand(CastLike(0, x), Shape(W)): a value computed at run time from constants only. Such a bias must count
as a constant for a fold, so constant sub-expressions are evaluated first (onnxscript's constant folder,
which runs the ONNX reference implementation of each op) and the nodes left unused are removed.
BatchNormalization nodes are excluded from evaluation, so every BN stays for the fold rules to judge and
report, and no exporter-style fusion happens here (that is onnxscript's *rewriter*, not used).
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.optimizer import fold_constants

from bnfold.folding.onnx_graph import is_op


def fold_constant_subexpressions(model: ir.Model) -> None:
    """In place: replace constant sub-expressions by initializers and drop the nodes nobody reads."""
    fold_constants(model, should_fold=_never_batchnorm)
    RemoveUnusedNodesPass()(model)


def _never_batchnorm(node: ir.Node) -> bool | None:
    """False (do not evaluate) for BatchNormalization; None leaves the decision to the folder's rules."""
    return False if is_op(node, "BatchNormalization") else None
