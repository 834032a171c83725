"""Find per-channel affine maps written as Mul / Add by constants: inference BatchNorm as tf2onnx,
paddle2onnx and hand-written `x * s + t` export it.

A candidate is

    Mul(x, s) [→ Add(·, t)]   or a lone   Add(x, t)  (s = 1)

(either operand order) where s and t have exactly one axis longer than 1 once aligned to x's rank from
the right (numpy broadcasting): (1, C, 1, 1), (C, 1, 1) and (C,) all qualify; that axis is the map's
channel axis. A scalar, or a constant varying along two axes, is not a per-channel map and is left
alone without a report entry. A t that is a scalar is allowed after a per-channel s (t_c = t).

Only floating-point operands on an axis other than 0 (the batch axis) of an x of rank ≥ 2 qualify, so
shape arithmetic on int64 tensors is never mistaken for a map. An operand that is a graph input with such
a shape is a candidate too, refused because it can change at
run time. A lone Add reading a MatMul is that MatMul's bias (a Gemm in disguise), not a map, and is left
alone. The constants are taken as they are after constant folding (folding/onnx_constants.py), so
Sub/Div/Sqrt chains of constants have already become one tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnfold.folding.arithmetic import F64, ScaleShift
from bnfold.folding.onnx_channel_map import AFFINE, ChannelMap
from bnfold.folding.onnx_graph import FloatArray, GraphEditor, constant, is_op, sole_consumer


@dataclass(frozen=True)
class _Operand:
    """One constant-shaped operand of a Mul/Add: its slot, its values (or why not constant), its axis."""

    slot: int
    values: FloatArray | str
    axis: int
    channels: int


def find_affine_maps(editor: GraphEditor) -> Iterator[ChannelMap | tuple[ir.Node, str]]:
    """Every candidate of the main graph in graph order: a ChannelMap, or (its node, why it is refused)."""
    claimed: set[ir.Node] = set()
    for node in list(editor.graph):
        if node in claimed or not is_op(node, "Mul", "Add"):
            continue
        operand = _per_channel_operand(editor, node)
        if operand is None:
            continue
        if isinstance(operand.values, str):
            yield node, operand.values
            continue
        x_slot = 1 - operand.slot
        scale = _along(operand.values, operand.channels)
        nodes, shift = [node], np.zeros(operand.channels)
        if node.op_type == "Add":
            if is_op(_producer(node, x_slot), "MatMul"):
                continue  # a MatMul's bias
            scale, shift = np.ones(operand.channels), scale
        else:
            add = _following_shift(editor, node, operand)
            if add is not None:
                nodes, shift = [node, add[0]], add[1]
        dtype = np.asarray(operand.values).dtype
        claimed.update(nodes)
        affine = ScaleShift(scale=scale, shift=shift)
        yield _site(editor, nodes, affine, dtype, x_slot, operand.axis)


def _site(
    editor: GraphEditor, nodes: list[ir.Node], affine: ScaleShift, dtype: np.dtype, x_slot: int, axis: int
) -> ChannelMap:
    name = nodes[0].name or f"{nodes[0].op_type}→{nodes[0].outputs[0].name}"
    site = ChannelMap(name, AFFINE, tuple(nodes), affine, dtype, x_slot=x_slot, axis=axis)
    producer = site.x.producer()
    if axis != 1 and is_op(producer, "Transpose") and producer is not None:
        perm = _perm(producer, editor.ranks.get(str(site.x.name)))
        if perm is not None and perm[axis] == 1:
            return ChannelMap(name, AFFINE, tuple(nodes), affine, dtype, x_slot=x_slot, axis=axis, transpose=producer)
    return site


def _per_channel_operand(editor: GraphEditor, node: ir.Node) -> _Operand | None:
    """The operand of `node` that is a per-channel constant (or a per-channel graph input), if any."""
    if len(node.inputs) != 2 or any(value is None for value in node.inputs):
        return None
    for slot in (1, 0):
        value, x = node.inputs[slot], node.inputs[1 - slot]
        assert value is not None and x is not None
        shape = _static_shape(value)
        rank = editor.ranks.get(str(x.name))
        if shape is None or rank is None or rank < 2 or len(shape) > rank or not _is_float(value):
            continue
        longer = [i for i, size in enumerate(shape) if size != 1]
        if len(longer) != 1 or not (value.is_initializer() or value.is_graph_input() or _is_constant_node(value)):
            continue
        axis = rank - len(shape) + longer[0]
        if axis == 0:  # the batch axis: not a channel
            continue
        return _Operand(slot, constant(value, f"the {node.op_type} operand"), axis, shape[longer[0]])
    return None


def _following_shift(editor: GraphEditor, mul: ir.Node, scale: _Operand) -> tuple[ir.Node, F64] | None:
    """The Add of a constant t right after `mul` on the same channels, with t as (C,), if there is one."""
    found = sole_consumer(mul.outputs[0])
    if isinstance(found, str) or not is_op(found[0], "Add"):
        return None
    add, slot = found
    other = add.inputs[1 - slot]
    values = constant(other, "shift")
    if isinstance(values, str) or values.ndim > (editor.ranks.get(str(mul.outputs[0].name)) or 0):
        return None
    if values.size == 1:
        return add, np.full(scale.channels, float(values.reshape(())))
    operand = _per_channel_operand(editor, add)
    if operand is None or operand.slot != 1 - slot or operand.axis != scale.axis or operand.channels != scale.channels:
        return None
    return add, _along(values, scale.channels)


def _along(values: FloatArray, channels: int) -> F64:
    return np.asarray(values, dtype=np.float64).reshape(channels)


def _static_shape(value: ir.Value) -> tuple[int, ...] | None:
    if value.const_value is not None:
        return tuple(value.const_value.shape.numpy())
    if _is_constant_node(value):
        tensor = ir.convenience.get_const_tensor(value)
        return None if tensor is None else tuple(tensor.shape.numpy())
    shape = value.shape
    if shape is None or not all(isinstance(dim, int) for dim in shape):
        return None
    return tuple(int(dim) for dim in shape)  # type: ignore[arg-type]


def _is_float(value: ir.Value) -> bool:
    tensor = value.const_value
    dtype = tensor.dtype if tensor is not None else value.dtype
    if dtype is None and _is_constant_node(value):
        constant_tensor = ir.convenience.get_const_tensor(value)
        dtype = None if constant_tensor is None else constant_tensor.dtype
    return dtype is not None and dtype.is_floating_point()


def _is_constant_node(value: ir.Value) -> bool:
    return is_op(value.producer(), "Constant")


def _producer(node: ir.Node, slot: int) -> ir.Node | None:
    value = node.inputs[slot]
    return None if value is None else value.producer()


def _perm(transpose: ir.Node, rank: int | None) -> list[int] | None:
    attr = transpose.attributes.get("perm")
    if attr is not None:
        return list(attr.as_ints())
    return None if rank is None else list(reversed(range(rank)))
