"""Fold an inference BatchNorm x̂ = s·x + t into the layer that reads x̂ (folding.arithmetic.fold_into_next).

    Conv (no zero padding):  W'[o, c, k] = W[o, c, k]·s_c,  b'_o = b_o + Σ_{c,k} W[o, c, k]·t_c
    Gemm z = α·x̂·B' + β·C (transA = 0):  B' scaled by s on its input axis K (axis 1 of B when
                             transB = 1, else axis 0);  C' = β·C + α·(B'ᵀ·t)  and β' = 1
    MatMul z = x̂·W (+ b), x̂'s last axis the channels:  W'[c, :] = s_c·W[c, :], b' = b + Wᵀ·t; when z
                             feeds only an Add of a constant b along its last axis (a Keras Dense, or the
                             MatMul + Add an earlier fold wrote) that Add gets b', else a new Add of Wᵀ·t.
                             The fold's probe is then that Add's output: after an earlier fold into the
                             same MatMul, the MatMul's own output exists in the folded graph only

A Conv that pads reads zeros at the border, where the BN would have produced t rather than 0, so it is
refused. The BN's output must be read by that one layer alone, as its data input.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.folding.arithmetic import fold_into_next as fold_arithmetic
from bnfold.folding.errors import FoldingError
from bnfold.folding.onnx_channel_map import ChannelMap, OnnxRule
from bnfold.folding.onnx_graph import (
    FloatArray,
    GraphEditor,
    constant,
    float_attr,
    input_name,
    int_attr,
    is_op,
    optional_constant,
    rounded,
    sole_consumer,
)
from bnfold.folding.plan import Rewrite, pads_with_zeros


def fold_into_next(editor: GraphEditor, site: ChannelMap) -> str | Rewrite:
    """Fold the map `site` into the single layer reading its output; returns what it went into, or why not."""
    found = sole_consumer(site.y)
    if isinstance(found, str):
        return found
    consumer, slot = found
    rule = NEXT_RULES.get(consumer.op_type) if is_op(consumer, *NEXT_RULES) else None
    if rule is None:
        return f"its consumer is {consumer.op_type}, not one of {', '.join(NEXT_RULES)}"
    if slot != 0:
        return f"it feeds input {slot} of {consumer.op_type} {consumer.name!r}, not its data input"
    if consumer.op_type != "MatMul" and site.axis != 1:
        return (
            f"{site.label()} scales axis {site.axis} of {site.x.name!r}, not the channel axis 1 that "
            f"{consumer.op_type} {consumer.name!r} reduces over"
        )
    try:
        return rule(editor, consumer, site)
    except FoldingError as error:
        return str(error)


def _conv(editor: GraphEditor, conv: ir.Node, site: ChannelMap) -> str | Rewrite:
    padding = _padding_refusal(conv)
    if padding is not None:
        return padding
    weight = constant(conv.inputs[1], "weight")
    bias = optional_constant(conv.inputs[2] if len(conv.inputs) > 2 else None, "bias")
    if isinstance(weight, str) or isinstance(bias, str):
        return str(weight if isinstance(weight, str) else bias)
    groups = int_attr(conv, "group", 1)
    new_weight, new_bias = fold_arithmetic(weight, bias, site.affine, groups=groups, dtype=weight.dtype)
    inputs = [
        site.x,
        editor.initializer(f"{input_name(conv, 1)}_bnfold", new_weight),
        editor.initializer(f"{input_name(conv, 1)}_bias_bnfold", rounded(new_bias, weight if bias is None else bias)),
    ]
    node = editor.node("Conv", inputs, conv.attributes.values(), conv.name or editor.unique("conv"))
    return _replace(editor, [*site.nodes, conv], [node], conv)


def _padding_refusal(conv: ir.Node) -> str | None:
    auto_pad = conv.attributes.get("auto_pad")
    mode = "NOTSET" if auto_pad is None else auto_pad.as_string()
    pads_attr = conv.attributes.get("pads")
    pads = [] if pads_attr is None else list(pads_attr.as_ints())
    if mode not in ("NOTSET", "VALID") or any(pads):
        return pads_with_zeros(f"Conv {conv.name!r}", f"auto_pad={mode}, pads={pads}")
    return None


def _gemm(editor: GraphEditor, gemm: ir.Node, site: ChannelMap) -> str | Rewrite:
    if int_attr(gemm, "transA", 0) != 0:
        return f"Gemm {gemm.name!r} has transA = 1, so BN's channel axis is not Gemm's reduction axis"
    b = constant(gemm.inputs[1], "Gemm B")
    c = optional_constant(gemm.inputs[2] if len(gemm.inputs) > 2 else None, "Gemm C")
    if isinstance(b, str) or isinstance(c, str):
        return str(b if isinstance(b, str) else c)
    trans_b = int_attr(gemm, "transB", 0) == 1
    new_out_major, gain = fold_arithmetic(b if trans_b else b.T, None, site.affine, dtype=b.dtype)  # (N, K)
    beta_c = np.zeros(1) if c is None else float_attr(gemm, "beta", 1.0) * c.astype(np.float64)
    new_c = beta_c + float_attr(gemm, "alpha", 1.0) * gain  # C' = β·C + α·Bᵀt, broadcast like C
    new_b = new_out_major if trans_b else new_out_major.T
    inputs = [
        site.x,
        editor.initializer(f"{input_name(gemm, 1)}_bnfold", new_b),
        editor.initializer(f"{input_name(gemm, 1)}_bias_bnfold", rounded(new_c, b if c is None else c)),
    ]
    attributes = [attr for attr in gemm.attributes.values() if attr.name != "beta"]  # β' = 1
    node = editor.node("Gemm", inputs, attributes, gemm.name or editor.unique("gemm"))
    return _replace(editor, [*site.nodes, gemm], [node], gemm)


def _matmul(editor: GraphEditor, matmul: ir.Node, site: ChannelMap) -> str | Rewrite:
    weight = constant(matmul.inputs[1], "MatMul weight")
    if isinstance(weight, str):
        return weight
    rank = editor.ranks.get(str(site.x.name))
    if weight.ndim != 2 or rank is None or site.axis != rank - 1:
        return (
            f"MatMul input rank is {rank} and weight rank {weight.ndim}: {site.label()} axis {site.axis} "
            "is not W's input axis"
        )
    new_weight_t, gain = fold_arithmetic(weight.T, None, site.affine, dtype=weight.dtype)  # W.T is (N, K)
    new_weight = editor.initializer(f"{input_name(matmul, 1)}_bnfold", new_weight_t.T)
    product = editor.node("MatMul", [site.x, new_weight], (), matmul.name or editor.unique("matmul"))
    bias_add = _bias_add(matmul, gain.size)
    if bias_add is None:
        shift = editor.initializer(f"{input_name(matmul, 1)}_bias_bnfold", rounded(gain, weight))
        plus = editor.node("Add", [product.outputs[0], shift], (), editor.unique(f"{product.name}_bias"))
        return _replace(editor, [*site.nodes, matmul], [product, plus], matmul)
    add, bias_value, bias = bias_add
    shift = editor.initializer(f"{bias_value.name}_bnfold", rounded(bias.astype(np.float64) + gain, bias))
    plus = editor.node("Add", [product.outputs[0], shift], (), add.name or editor.unique(f"{product.name}_bias"))
    return _replace(editor, [*site.nodes, matmul, add], [product, plus], matmul, add)


def _bias_add(matmul: ir.Node, columns: int) -> tuple[ir.Node, ir.Value, FloatArray] | None:
    """The Add that alone reads `matmul`'s output and adds a constant b along its last axis (shape (),
    (N,) or (1, …, 1, N)), with b's value and b; None when there is none (then the fold writes an Add)."""
    found = sole_consumer(matmul.outputs[0])
    if isinstance(found, str) or not is_op(found[0], "Add"):
        return None
    add, slot = found
    value = add.inputs[1 - slot]
    bias = constant(value, "bias")
    if value is None or isinstance(bias, str) or any(size != 1 for size in bias.shape[:-1]):
        return None
    if bias.ndim > 0 and bias.shape[-1] not in (1, columns):
        return None
    return add, value, bias


def _replace(
    editor: GraphEditor, old: list[ir.Node], new: list[ir.Node], consumer: ir.Node, last: ir.Node | None = None
) -> Rewrite:
    """Replace `old` by `new`; the output of `last` (default: the consumer) is taken over and is the probe."""
    output = (last or consumer).outputs[0]
    probe = str(output.name)
    editor.replace(old, new, output)
    return Rewrite(target=consumer.name or new[0].name or consumer.op_type, probe=probe)


NEXT_RULES: dict[str, OnnxRule] = {"Conv": _conv, "Gemm": _gemm, "MatMul": _matmul}
