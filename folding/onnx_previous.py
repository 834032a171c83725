"""Fold an inference BatchNorm y = s·z + t into the layer that produces z (folding.arithmetic).

    Conv, ConvTranspose:   W' = W·s on the output-channel axis (ConvTranspose: axis 1 within each group),
                           b' = s·b + t
    Gemm  z = α·A'·B' + β·C:  B' scaled by s on its output axis N (axis 0 of B when transB = 1, else
                           axis 1), C' = s·(β·C) + t and β' = 1; α and transA are unchanged
    MatMul z = X·W (+ b):  W'[:, n] = W[:, n]·s_n and b' = s·b + t (an Add of t is created when there was
                           no b); only when z is 2-D, so that BN's channel axis 1 is W's output axis

Each rule returns the name of the layer folded into, or the reason it refused. The producer must be
read by the BN alone (not by a residual Add, not a graph output) and its weights must be constants.
New weights always get new initializers, so a weight shared with another node is never mutated.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.folding.arithmetic import fold_into_previous as fold_arithmetic
from bnfold.folding.errors import FoldingError
from bnfold.folding.onnx_channel_map import ChannelMap, OnnxRule
from bnfold.folding.onnx_graph import (
    GraphEditor,
    constant,
    float_attr,
    int_attr,
    is_op,
    optional_constant,
    private_output,
    rounded,
)
from bnfold.folding.plan import Rewrite, output_needed_elsewhere


def fold_into_previous(editor: GraphEditor, site: ChannelMap) -> str | Rewrite:
    """Fold the map `site` into its producer; returns what it went into, or the reason it refused."""
    if site.transpose is not None:
        shared = private_output(site.x)
        if shared is not None:
            return output_needed_elsewhere(f"Transpose {site.transpose.name!r}", shared)
    z = site.source
    producer = z.producer()
    if producer is None:
        return f"its input {z.name!r} is a graph input or initializer, not a layer's output"
    rule = PREVIOUS_RULES.get(producer.op_type) if is_op(producer, *PREVIOUS_RULES) else None
    if rule is None:
        return f"its producer is {producer.op_type}, not one of {', '.join(PREVIOUS_RULES)}"
    shared = private_output(z)
    if shared is not None:
        return output_needed_elsewhere(f"{producer.op_type} {producer.name!r}", shared)
    if producer.op_type != "MatMul" and producer.op_type != "Add" and site.source_axis != 1:
        return _not_channel_axis(site, producer, 1)
    try:
        return rule(editor, producer, site)
    except FoldingError as error:
        return str(error)


def _conv(editor: GraphEditor, producer: ir.Node, site: ChannelMap) -> str | Rewrite:
    weight = constant(producer.inputs[1], "weight")
    bias = optional_constant(_input(producer, 2), "bias")
    if isinstance(weight, str) or isinstance(bias, str):
        return str(weight if isinstance(weight, str) else bias)
    transposed = producer.op_type == "ConvTranspose"
    new_weight, new_bias = fold_arithmetic(
        weight, bias, site.affine, transposed=transposed, groups=int_attr(producer, "group", 1), dtype=weight.dtype
    )
    inputs = [
        producer.inputs[0],
        editor.initializer(_hint(producer, 1), new_weight),
        editor.initializer(_hint(producer, 2), rounded(new_bias, weight if bias is None else bias)),
    ]
    node = editor.node(producer.op_type, inputs, producer.attributes.values(), _name(editor, producer))
    return _replace(editor, [producer], [node], site, producer)


def _gemm(editor: GraphEditor, producer: ir.Node, site: ChannelMap) -> str | Rewrite:
    b = constant(producer.inputs[1], "Gemm B")
    c = optional_constant(_input(producer, 2), "Gemm C")
    if isinstance(b, str) or isinstance(c, str):
        return str(b if isinstance(b, str) else c)
    trans_b = int_attr(producer, "transB", 0) == 1
    out_major = b if trans_b else b.T  # (N, K)
    scaled_c = None if c is None else float_attr(producer, "beta", 1.0) * c.astype(np.float64)
    new_out_major, new_c = fold_arithmetic(out_major, scaled_c, site.affine, dtype=b.dtype)
    new_b = new_out_major if trans_b else new_out_major.T  # contiguous: the result keeps b.T's layout
    inputs = [
        producer.inputs[0],
        editor.initializer(_hint(producer, 1), new_b),
        editor.initializer(_hint(producer, 2), rounded(new_c, b if c is None else c)),
    ]
    attributes = [attr for attr in producer.attributes.values() if attr.name != "beta"]  # β' = 1
    node = editor.node("Gemm", inputs, attributes, _name(editor, producer))
    return _replace(editor, [producer], [node], site, producer)


def _matmul(editor: GraphEditor, producer: ir.Node, site: ChannelMap) -> str | Rewrite:
    return _fold_matmul(editor, producer, None, site)


def _matmul_add(editor: GraphEditor, producer: ir.Node, site: ChannelMap) -> str | Rewrite:
    """Add(MatMul(X, W), b) or Add(b, MatMul(X, W)) with b constant: a Gemm in disguise."""
    for slot in (0, 1):
        matmul_out, other = producer.inputs[slot], producer.inputs[1 - slot]
        matmul = None if matmul_out is None else matmul_out.producer()
        if is_op(matmul, "MatMul") and matmul is not None and not isinstance(constant(other, "b"), str):
            shared = private_output(matmul_out) if matmul_out is not None else None
            if shared is not None:
                return output_needed_elsewhere(f"MatMul {matmul.name!r}", shared)
            return _fold_matmul(editor, matmul, producer, site)
    return "its producer is an Add that is not MatMul + constant bias"


def _fold_matmul(editor: GraphEditor, matmul: ir.Node, add: ir.Node | None, site: ChannelMap) -> str | Rewrite:
    weight = constant(matmul.inputs[1], "MatMul weight")
    if isinstance(weight, str):
        return weight
    rank = editor.ranks.get(str(site.source.name))
    if weight.ndim != 2 or rank is None or site.source_axis != rank - 1:
        return (
            f"MatMul output rank is {rank} and weight rank {weight.ndim}: {site.label()} axis {site.source_axis} "
            "is not W's output axis"
        )
    bias_value = None if add is None else _other_input(add, matmul.outputs[0])
    bias = optional_constant(bias_value, "bias")
    if isinstance(bias, str):
        return bias
    new_weight_t, new_bias = fold_arithmetic(weight.T, bias, site.affine, dtype=weight.dtype)  # W.T is (N, K)
    new_weight = editor.initializer(_hint(matmul, 1), new_weight_t.T)
    product = editor.node("MatMul", [matmul.inputs[0], new_weight], matmul.attributes.values(), _name(editor, matmul))
    shift_hint = f"{bias_value.name}_bnfold" if bias_value is not None else _hint(matmul, 2)
    shift = editor.initializer(shift_hint, rounded(new_bias, weight if bias is None else bias))
    add_name = add.name if add is not None and add.name else editor.unique(f"{product.name}_bias")
    plus = editor.node("Add", [product.outputs[0], shift], (), add_name)
    return _replace(editor, [matmul] if add is None else [matmul, add], [product, plus], site, matmul)


def _other_input(node: ir.Node, known: ir.Value) -> ir.Value | None:
    return node.inputs[1] if node.inputs[0] is known else node.inputs[0]


def _replace(
    editor: GraphEditor, old: list[ir.Node], new: list[ir.Node], site: ChannelMap, producer: ir.Node
) -> Rewrite:
    """Replace the producer's nodes `old` and the map by `new` (then the map's Transpose, written again)."""
    probe = str(site.y.name)
    if site.transpose is not None:
        transpose = site.transpose
        name = transpose.name or editor.unique("transpose")
        again = editor.node("Transpose", [new[-1].outputs[0]], transpose.attributes.values(), name)
        new = [*new, again]
    editor.replace([*old, *site.backward_nodes], new, site.y)
    return Rewrite(target=producer.name or new[0].name or producer.op_type, probe=probe)


def _not_channel_axis(site: ChannelMap, producer: ir.Node, channel_axis: int) -> str:
    return (
        f"{site.label()} scales axis {site.source_axis} of {site.source.name!r}, not the channel axis "
        f"{channel_axis} of {producer.op_type} {producer.name!r}"
    )


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _hint(node: ir.Node, index: int) -> str:
    """A readable name for a folded replacement of input `index` (weight 1, bias 2)."""
    source = _input(node, index) or _input(node, 1)
    base = str(source.name) if source is not None and source.name else node.op_type.lower()
    return f"{base}_bnfold" if index == 1 or _input(node, index) is not None else f"{base}_bias_bnfold"


def _name(editor: GraphEditor, node: ir.Node) -> str:
    """The rewritten node keeps the name of the node it replaces (which is removed)."""
    return node.name or editor.unique(node.op_type.lower())


PREVIOUS_RULES: dict[str, OnnxRule] = {
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _matmul_add,
}
