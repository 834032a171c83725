"""Read an ONNX BatchNormalization node as the affine map it computes at inference, or refuse.

At inference (opsets 9, 14, 15; 7 and 8 with spatial = 1) BatchNormalization over channel axis 1 is

    Y = scale · (X − mean) / √(var + ε) + B  =  s · X + t,   s = scale / √(var + ε),  t = B − mean · s

(folding.arithmetic.batchnorm_scale_shift). It is *not* that map, and must never be folded, when it
normalises with the statistics of the batch: `training_mode = 1` (opsets 14, 15), or extra outputs
requested (running/saved mean and variance, which opset 9 computes only in training), or statistics
that are not compile-time constants (for example computed by ReduceMean from the batch).
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.folding.arithmetic import batchnorm_scale_shift
from bnfold.folding.errors import FoldingError
from bnfold.folding.onnx_channel_map import BATCHNORM, ChannelMap
from bnfold.folding.onnx_graph import FloatArray, constant, float_attr, int_attr

DEFAULT_EPSILON = 1e-5
_ROLES = ("scale (γ)", "B (β)", "input_mean (μ)", "input_var (σ²)")


def read_batchnorm(node: ir.Node, opset: int) -> ChannelMap | str:
    """The inference affine map of `node` (on channel axis 1), or the reason it cannot be treated as one."""
    refusal = _mode_refusal(node, opset)
    if refusal is not None:
        return refusal
    if len(node.inputs) != 5:
        return f"BatchNormalization has {len(node.inputs)} inputs, expected 5"
    arrays: list[FloatArray] = []
    for role, value in zip(_ROLES, node.inputs[1:], strict=True):
        array = constant(value, role)
        if isinstance(array, str):
            return array
        arrays.append(array)
    gamma, beta, mean, var = arrays
    if mean.ndim != 1:
        return f"input_mean has shape {mean.shape}; only per-channel (1-D) statistics can be folded"
    try:
        affine = batchnorm_scale_shift(gamma, beta, mean, var, float_attr(node, "epsilon", DEFAULT_EPSILON))
    except FoldingError as error:
        return str(error)
    return ChannelMap(bn_name(node), BATCHNORM, (node,), affine, dtype=gamma.dtype)


def _mode_refusal(node: ir.Node, opset: int) -> str | None:
    if opset < 7:
        return f"opset {opset} BatchNormalization (is_test era) is not supported; convert the model to opset ≥ 9"
    if opset < 9 and int_attr(node, "spatial", 1) != 1:
        return "spatial = 0 normalises per element, not per channel; it cannot be folded"
    if int_attr(node, "training_mode", 0) != 0:
        return "training_mode = 1: it normalises with batch statistics, not the stored running statistics"
    extra = [value.name for value in node.outputs[1:] if value.name or value.uses()]
    if extra:
        return f"it also outputs running/saved statistics {extra} (training behaviour)"
    return None


def bn_name(node: ir.Node) -> str:
    """The name a BN has in the report: its node name, else the name of its output."""
    return node.name or f"BatchNormalization→{node.outputs[0].name}"
