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
from bnfold.folding.onnx_batchnorm import InferenceBatchNorm, OnnxRule, bn_input
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


def fold_into_previous(editor: GraphEditor, bn: ir.Node, batchnorm: InferenceBatchNorm) -> str | Rewrite:
    """Fold `bn` into its producer; returns what it went into, or the reason it refused."""
    z = bn_input(bn)
    producer = z.producer()
    if producer is None:
        return f"its input {z.name!r} is a graph input or initializer, not a layer's output"
    rule = PREVIOUS_RULES.get(producer.op_type) if is_op(producer, *PREVIOUS_RULES) else None
    if rule is None:
        return f"its producer is {producer.op_type}, not one of {', '.join(PREVIOUS_RULES)}"
    shared = private_output(z)
    if shared is not None:
        return output_needed_elsewhere(f"{producer.op_type} {producer.name!r}", shared)
    try:
        return rule(editor, producer, bn, batchnorm)
    except FoldingError as error:
        return str(error)


def _conv(editor: GraphEditor, producer: ir.Node, bn: ir.Node, batchnorm: InferenceBatchNorm) -> str | Rewrite:
    weight = constant(producer.inputs[1], "weight")
    bias = optional_constant(_input(producer, 2), "bias")
    if isinstance(weight, str) or isinstance(bias, str):
        return str(weight if isinstance(weight, str) else bias)
    transposed = producer.op_type == "ConvTranspose"
    new_weight, new_bias = fold_arithmetic(
        weight, bias, batchnorm.affine, transposed=transposed, groups=int_attr(producer, "group", 1)
    )
    inputs = [
        producer.inputs[0],
        editor.initializer(_hint(producer, 1), rounded(new_weight, weight)),
        editor.initializer(_hint(producer, 2), rounded(new_bias, weight if bias is None else bias)),
    ]
    node = editor.node(producer.op_type, inputs, producer.attributes.values(), _name(editor, producer))
    return _replace(editor, [producer, bn], [node], bn, producer)


def _gemm(editor: GraphEditor, producer: ir.Node, bn: ir.Node, batchnorm: InferenceBatchNorm) -> str | Rewrite:
    b = constant(producer.inputs[1], "Gemm B")
    c = optional_constant(_input(producer, 2), "Gemm C")
    if isinstance(b, str) or isinstance(c, str):
        return str(b if isinstance(b, str) else c)
    trans_b = int_attr(producer, "transB", 0) == 1
    out_major = b if trans_b else b.T  # (N, K)
    scaled_c = None if c is None else float_attr(producer, "beta", 1.0) * c.astype(np.float64)
    new_out_major, new_c = fold_arithmetic(out_major, scaled_c, batchnorm.affine)
    new_b = new_out_major if trans_b else new_out_major.T
    inputs = [
        producer.inputs[0],
        editor.initializer(_hint(producer, 1), rounded(new_b, b)),
        editor.initializer(_hint(producer, 2), rounded(new_c, b if c is None else c)),
    ]
    attributes = [attr for attr in producer.attributes.values() if attr.name != "beta"]  # β' = 1
    node = editor.node("Gemm", inputs, attributes, _name(editor, producer))
    return _replace(editor, [producer, bn], [node], bn, producer)


def _matmul(editor: GraphEditor, producer: ir.Node, bn: ir.Node, batchnorm: InferenceBatchNorm) -> str | Rewrite:
    return _fold_matmul(editor, producer, None, bn, batchnorm)


def _matmul_add(editor: GraphEditor, producer: ir.Node, bn: ir.Node, batchnorm: InferenceBatchNorm) -> str | Rewrite:
    """Add(MatMul(X, W), b) or Add(b, MatMul(X, W)) with b constant: a Gemm in disguise."""
    for slot in (0, 1):
        matmul_out, other = producer.inputs[slot], producer.inputs[1 - slot]
        matmul = None if matmul_out is None else matmul_out.producer()
        if is_op(matmul, "MatMul") and matmul is not None and not isinstance(constant(other, "b"), str):
            shared = private_output(matmul_out) if matmul_out is not None else None
            if shared is not None:
                return output_needed_elsewhere(f"MatMul {matmul.name!r}", shared)
            return _fold_matmul(editor, matmul, producer, bn, batchnorm)
    return "its producer is an Add that is not MatMul + constant bias"


def _fold_matmul(
    editor: GraphEditor, matmul: ir.Node, add: ir.Node | None, bn: ir.Node, batchnorm: InferenceBatchNorm
) -> str | Rewrite:
    weight = constant(matmul.inputs[1], "MatMul weight")
    if isinstance(weight, str):
        return weight
    rank = editor.ranks.get(str(bn_input(bn).name))
    if weight.ndim != 2 or rank != 2:
        return f"MatMul output rank is {rank} and weight rank {weight.ndim}: BN axis 1 is not W's output axis"
    bias_value = None if add is None else _other_input(add, matmul.outputs[0])
    bias = optional_constant(bias_value, "bias")
    if isinstance(bias, str):
        return bias
    new_weight_t, new_bias = fold_arithmetic(weight.T, bias, batchnorm.affine)  # W.T is (N, K)
    new_weight = editor.initializer(_hint(matmul, 1), rounded(new_weight_t.T, weight))
    product = editor.node("MatMul", [matmul.inputs[0], new_weight], matmul.attributes.values(), _name(editor, matmul))
    shift_hint = f"{bias_value.name}_bnfold" if bias_value is not None else _hint(matmul, 2)
    shift = editor.initializer(shift_hint, rounded(new_bias, weight if bias is None else bias))
    add_name = add.name if add is not None and add.name else editor.unique(f"{product.name}_bias")
    plus = editor.node("Add", [product.outputs[0], shift], (), add_name)
    return _replace(editor, [matmul, bn] if add is None else [matmul, add, bn], [product, plus], bn, matmul)


def _other_input(node: ir.Node, known: ir.Value) -> ir.Value | None:
    return node.inputs[1] if node.inputs[0] is known else node.inputs[0]


def _replace(editor: GraphEditor, old: list[ir.Node], new: list[ir.Node], bn: ir.Node, producer: ir.Node) -> Rewrite:
    probe = str(bn.outputs[0].name)
    editor.replace(old, new, bn.outputs[0])
    return Rewrite(target=producer.name or new[0].name or producer.op_type, probe=probe)


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
