"""Small queries and edits on an onnx-ir graph, shared by the ONNX folding rules.

Every query that can refuse returns a *reason* string instead of raising, so the caller can put it in
the fold report. Constants are initializers (that are not also graph inputs, which a caller may override
at run time) or outputs of `Constant` nodes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import onnx_ir as ir
from numpy.typing import NDArray

from bnfold.folding.rounding import round_once

ONNX_DOMAINS = ("", "ai.onnx")
_FOLD_SUFFIX = re.compile(r"(_bnfold(_\d+)?)+$")
FloatArray = NDArray[np.floating]


def is_op(node: ir.Node | None, *op_types: str) -> bool:
    """True when `node` is one of `op_types` in the default ONNX domain."""
    return node is not None and node.domain in ONNX_DOMAINS and node.op_type in op_types


def constant(value: ir.Value | None, role: str) -> FloatArray | str:
    """The floating-point numpy array behind `value`, or the reason it is not a compile-time constant."""
    if value is None:
        return f"{role} is missing"
    if value.is_graph_input():
        return f"{role} {value.name!r} is a graph input (it can change at run time)"
    tensor: ir.TensorProtocol | None = None
    if value.is_initializer():
        tensor = value.const_value
    elif is_op(value.producer(), "Constant"):
        try:
            tensor = ir.convenience.get_const_tensor(value)
        except ValueError:
            tensor = None
    if tensor is None:
        return f"{role} {value.name!r} is computed at run time, not a constant initializer"
    if not tensor.dtype.is_floating_point():
        return f"{role} {value.name!r} has dtype {tensor.dtype.name}, not floating point"
    return cast(FloatArray, tensor.numpy())


def optional_constant(value: ir.Value | None, role: str) -> FloatArray | str | None:
    """Like `constant`, but an absent optional input gives None."""
    return None if value is None else constant(value, role)


def input_name(node: ir.Node, index: int) -> str:
    """The name of input `index` of `node` ('' when absent): a base for names of replacements."""
    value = node.inputs[index] if len(node.inputs) > index else None
    return "" if value is None or value.name is None else value.name


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


def sole_consumer(value: ir.Value) -> tuple[ir.Node, int] | str:
    """The one node reading `value` and the input slot it reads, or why there is not exactly one."""
    if value.is_graph_output():
        return f"{value.name!r} is a graph output"
    uses = list(value.uses())
    if len(uses) != 1:
        return f"{value.name!r} has {len(uses)} consumers, not one"
    return uses[0].node, uses[0].idx


def private_output(value: ir.Value) -> str | None:
    """None when `value` feeds exactly one node and is not a graph output, else the reason."""
    found = sole_consumer(value)
    return found if isinstance(found, str) else None


@dataclass
class GraphEditor:
    """Creates uniquely named initializers and nodes in one graph and records dropped values.

    `ranks` and `elem_types` map value names to their tensor rank and element type where shape inference
    found them.
    `superseded` maps the name of every value a rewrite removed to the value that now carries its data
    further down the graph (used to measure each fold's error at a point both graphs share).
    """

    graph: ir.Graph
    ranks: dict[str, int]
    elem_types: dict[str, ir.DataType] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    superseded: dict[str, str] = field(default_factory=dict)
    created: list[ir.Value] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.taken |= {name for name in ir.convenience.create_value_mapping(self.graph)}
        self.taken |= {node.name for node in ir.traversal.RecursiveGraphIterator(self.graph) if node.name}

    def unique(self, hint: str) -> str:
        name, counter = hint, 1
        while name in self.taken:
            counter += 1
            name = f"{hint}_{counter}"
        self.taken.add(name)
        return name

    def initializer(self, hint: str, array: NDArray[np.generic]) -> ir.Value:
        """Register `array` (already in its final dtype) as a new initializer named after `hint`."""
        name = self.unique(hint)
        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        value.type = ir.TensorType(value.const_value.dtype)  # type: ignore[union-attr]
        value.shape = ir.Shape(array.shape)
        self.graph.register_initializer(value)
        self.created.append(value)
        return value

    def restore_names(self) -> None:
        """Give each fused initializer its source's name back ('conv.weight_bnfold' → 'conv.weight') where
        no value of the graph holds that name any more (the source had no other reader and was removed)."""
        live = set(ir.convenience.create_value_mapping(self.graph))
        for value in self.created:
            name = str(value.name)
            base = _FOLD_SUFFIX.sub("", name)
            if value.is_initializer() and base != name and base not in live:
                ir.convenience.rename_values(value, base)
                live.add(base)

    def node(
        self, op_type: str, inputs: Sequence[ir.Value | None], attributes: Iterable[ir.Attr], name: str
    ) -> ir.Node:
        """A new default-domain node called `name` (exactly) with one uniquely named output."""
        node = ir.Node("", op_type, inputs, list(attributes), num_outputs=1, name=name)
        node.outputs[0].name = self.unique(f"{name}_output")
        return node

    def replace(self, old_nodes: Sequence[ir.Node], new_nodes: Sequence[ir.Node], old_output: ir.Value) -> ir.Value:
        """Put `new_nodes` where `old_nodes` were; the last new node's output takes over `old_output`
        (its name and every use, graph outputs included). Returns that output."""
        new_output = new_nodes[-1].outputs[0]
        removed = [v.name for n in old_nodes for v in n.outputs if v is not old_output and v.name]
        orphan_candidates = [v for n in old_nodes for v in n.inputs if v is not None]
        ir.convenience.replace_nodes_and_values(
            self.graph, old_nodes[-1], old_nodes, new_nodes, [old_output], [new_output]
        )
        for name in removed:
            self.superseded[name] = str(new_output.name)
        self._drop_orphans(orphan_candidates)
        return new_output

    def _drop_orphans(self, values: Iterable[ir.Value]) -> None:
        """Remove initializers and Constant nodes a rewrite left without any reader."""
        for value in values:
            if value.uses() or value.is_graph_output() or value.is_graph_input():
                continue
            if value.is_initializer() and value.name is not None:
                self.graph.initializers.pop(value.name)
            producer = value.producer()
            if is_op(producer, "Constant") and producer is not None and producer.graph is self.graph:
                self.graph.remove(producer, safe=True)


def rounded(array: NDArray[np.float64], like: FloatArray) -> FloatArray:
    """Round a float64 result once, to nearest-even, to the dtype of the tensor it replaces (bfloat16 and
    float16 through round-to-odd float32, folding/rounding.py; a plain astype would round bfloat16 twice)."""
    return cast(FloatArray, round_once(array, like.dtype))
