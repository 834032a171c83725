"""Find fixed per-channel affine maps y = x·s + t in a captured graph, written as plain tensor arithmetic.

FrozenBatchNorm2d (torchvision's detection backbones, DETR, detectron2) and layer scales are not BatchNorm
modules: torch.fx traces through them, and what remains is a `mul` by a constant and/or an `add` of a
constant. Such a chain is a *site* when

- one operand is the value x (computed from the model input) and the other is **constant**: computed only
  from buffers, parameters and Python constants, never from the input (it is evaluated once, in float64);
- the constant broadcasts **only along the channel axis** 1 of x: after left-padding its shape with 1s to
  x's rank, every axis but axis 1 has size 1 and axis 1 has x's C channels ((1, C, 1, 1) or (C, 1, 1) for a
  conv output, (C,) for an (N, C) Linear output);
- x comes from a Conv/ConvTranspose/Linear, or the chain's result feeds one.

A scalar, a full-tensor or a non-channel constant, an operand computed from the input (batch statistics),
or a module in training mode gives a *refused* site, kept with its reason; a multiply by a Python number
is not a site at all. The kind is "frozen_batchnorm" when the ops come from a module holding running_mean
and running_var buffers, else "affine". Folding a site is folding a BatchNorm (folding/torch_plan.py).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn

from bnfold.folding.arithmetic import ScaleShift
from bnfold.folding.torch_batchnorm import BatchNormSite
from bnfold.folding.torch_measure import Recording
from bnfold.folding.torch_rules import INTO_NEXT, INTO_PREVIOUS
from bnfold.folding.torch_tensors import as_f64
from bnfold.messages import first_line

_OPS = {operator.mul: "mul", torch.mul: "mul", operator.add: "add", torch.add: "add"}
_LEFT = "left as it is"


@dataclass(frozen=True)
class AffineSite:
    """One per-channel multiply/add chain: `site` is it in BatchNorm terms (node = the chain's last op,
    input = x, affine or refusal), `chain` its ops in order."""

    site: BatchNormSite
    kind: str
    chain: tuple[fx.Node, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.chain)


def arithmetic_op(node: fx.Node) -> str | None:
    """ "mul" or "add" for a two-operand multiply/add call without keywords, else None."""
    if node.kwargs or len(node.args) != 2:
        return None
    if node.op == "call_function":
        return _OPS.get(node.target)  # type: ignore[arg-type]
    if node.op == "call_method" and node.target in ("mul", "add"):
        return str(node.target)
    return None


def is_constant(node: object) -> bool:
    """True for a graph node computed only from attributes (buffers, parameters, traced constants)."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "get_attr":
        return True
    inputs = node.all_input_nodes
    return node.op in ("call_function", "call_method") and bool(inputs) and all(map(is_constant, inputs))


def _split(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(value, other operand) of a mul/add whose operands are both graph nodes, the value non-constant."""
    first, second = node.args
    if not isinstance(first, fx.Node) or not isinstance(second, fx.Node):
        return None  # a Python number: not a per-channel map
    if is_constant(first) and not is_constant(second):
        return second, first
    if is_constant(first):
        return None  # both constant: part of a constant computation
    return first, second


def measured_nodes(graph: fx.Graph) -> set[str]:
    """Names of every mul/add with a constant operand and of their users: a site's reference values."""
    names: set[str] = set()
    for node in graph.nodes:
        if arithmetic_op(node) and _split(node) is not None and any(map(is_constant, node.args)):
            names |= {node.name, *(user.name for user in node.users)}
    return names


def _chain(node: fx.Node) -> tuple[fx.Node, ...]:
    """The mul and the add of a constant that is its only user, or the single op."""
    users = list(node.users)
    if arithmetic_op(node) == "mul" and len(users) == 1 and arithmetic_op(users[0]) == "add":
        split = _split(users[0])
        if split is not None and split[0] is node and is_constant(split[1]):
            return node, users[0]
    return (node,)


def _is_layer(graph_module: fx.GraphModule, node: fx.Node, table: dict[type[nn.Module], Any]) -> bool:
    return node.op == "call_module" and type(graph_module.get_submodule(str(node.target))) in table


def _next_to_layer(graph_module: fx.GraphModule, value: fx.Node, end: fx.Node) -> bool:
    users = list(end.users)
    following = len(users) == 1 and _is_layer(graph_module, users[0], INTO_NEXT)
    return _is_layer(graph_module, value, INTO_PREVIOUS) or following


def find_sites(
    graph_module: fx.GraphModule, source: nn.Module, recording: Recording, taken: set[str]
) -> list[AffineSite]:
    """Every multiply/add chain next to a layer in graph order, described as a (possibly refused) site.
    `source` is the model that was traced (it owns the traced-through modules); `taken` collects names."""
    sites: list[AffineSite] = []
    claimed: set[fx.Node] = set()
    for node in list(graph_module.graph.nodes):
        split = _split(node) if arithmetic_op(node) and node not in claimed else None
        if split is None:
            continue
        value, other = split
        chain = _chain(node) if is_constant(other) else (node,)
        per_channel = _per_channel_refusal("", recording.shapes.get(other.name), value, recording) is None
        if (is_constant(other) or per_channel) and _next_to_layer(graph_module, value, chain[-1]):
            claimed.update(chain)
            sites.append(_describe(graph_module, source, recording, value, chain, taken))
    return sites


def _describe(
    graph_module: fx.GraphModule,
    source: nn.Module,
    recording: Recording,
    value: fx.Node,
    chain: tuple[fx.Node, ...],
    taken: set[str],
) -> AffineSite:
    owner_path, owner = _owner(source, chain[0])
    frozen = all(isinstance(getattr(owner, key, None), Tensor) for key in ("running_mean", "running_var"))
    base = owner_path or chain[-1].name
    name = base if base not in taken else f"{base}@{chain[-1].name}"
    taken.add(name)
    affine, refusal = _affine(graph_module, owner, recording, value, chain)
    like = recording.dtypes.get(value.name, torch.get_default_dtype())
    site = BatchNormSite(chain[-1], name, value, affine, refusal, like, torch.device("cpu"))
    return AffineSite(site, "frozen_batchnorm" if frozen else "affine", chain)


def _owner(source: nn.Module, node: fx.Node) -> tuple[str, nn.Module]:
    """The innermost module whose forward emitted `node` (the traced model itself at top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    for path in reversed([entry[0] for entry in stack.values()]):
        try:
            return str(path), source.get_submodule(str(path))
        except AttributeError:
            continue
    return "", source


def _affine(
    graph_module: fx.GraphModule, owner: nn.Module, recording: Recording, value: fx.Node, chain: tuple[fx.Node, ...]
) -> tuple[ScaleShift | None, str | None]:
    """The chain's per-channel (scale, shift) in float64, or why it is not a fixed per-channel map."""
    if owner.training:
        return None, f"{type(owner).__name__} is in training mode; call model.eval() before folding"
    if recording.dtypes.get(chain[-1].name) != recording.dtypes.get(value.name):
        return None, "the constant operand changes the value's dtype (type promotion); " + _LEFT
    channels = recording.shapes.get(value.name, (0, 0))[1] if recording.ndims.get(value.name, 0) >= 2 else 0
    scale, shift = np.ones(channels), np.zeros(channels)
    for op in chain:
        other = _split(op)[1]  # type: ignore[index]
        label = "factor" if arithmetic_op(op) == "mul" else "addend"
        if not is_constant(other):
            return None, (
                f"its {label} {other.name} is computed from the model input (e.g. batch statistics), not from "
                f"buffers or parameters alone, so it is not a fixed map; {_LEFT}"
            )
        constant = evaluate(graph_module, other)
        if isinstance(constant, str):
            return None, constant
        refusal = _per_channel_refusal(label, tuple(constant.shape), value, recording)
        if refusal is not None:
            return None, refusal
        vector = as_f64(constant).reshape(-1) * np.ones(channels)
        scale, shift = (scale * vector, shift * vector) if label == "factor" else (scale, shift + vector)
    return ScaleShift(scale, shift), None


def _per_channel_refusal(label: str, shape: tuple[int, ...] | None, value: fx.Node, recording: Recording) -> str | None:
    """None when `shape` broadcasts against the value only along its channel axis 1, else why not."""
    value_shape = recording.shapes.get(value.name)
    if shape is None or value_shape is None or len(value_shape) < 2:
        return f"the value {value.name} has no channel axis 1; {_LEFT}"
    if len(shape) > len(value_shape):
        return f"the {label} of shape {shape} has more axes than the value {value_shape}; {_LEFT}"
    padded = (1,) * (len(value_shape) - len(shape)) + shape
    channels = value_shape[1]
    if all(size == 1 for size in padded) and channels != 1:
        return f"the {label} of shape {shape} is a scalar, one number for every channel, not a per-channel map; {_LEFT}"
    varying = [axis for axis, size in enumerate(padded) if axis != 1 and size != 1]
    if varying and padded[1:] == value_shape[1:]:
        return (
            f"the {label} of shape {shape} is a full tensor: it varies along axes {varying}, not only along "
            f"the channel axis 1; {_LEFT}"
        )
    if varying or padded[1] != channels:
        return (
            f"the {label} of shape {shape} broadcasts along axes other than the channel axis 1 of {value_shape}; "
            + _LEFT
        )
    return None


def _run_node(graph_module: fx.GraphModule, node: fx.Node, run: Callable[[fx.Node], Any]) -> Any:
    """One node of a constant computation; its inputs come from `run`."""
    if node.op == "get_attr":
        attribute: Any = reduce(getattr, str(node.target).split("."), graph_module)
        widened = isinstance(attribute, Tensor) and attribute.is_floating_point()
        return attribute.detach().double() if widened else attribute
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), run)
    if node.op == "call_function":
        function: Any = node.target
        return function(*args, **kwargs)
    return getattr(args[0], str(node.target))(*args[1:], **kwargs)


def evaluate(graph_module: fx.GraphModule, node: fx.Node) -> Tensor | str:
    """The value of a constant node, computed once from the graph module's attributes in float64 (floating
    attributes are widened first); a failure becomes a refusal reason."""
    values: dict[fx.Node, Any] = {}

    def run(current: fx.Node) -> Any:
        if current not in values:
            values[current] = _run_node(graph_module, current, run)
        return values[current]

    try:
        with torch.no_grad():
            result = run(node)
    except Exception as error:  # arbitrary user arithmetic on attributes
        why = f"{type(error).__name__}: {first_line(error)}"
        return f"its constant operand {node.name} cannot be evaluated ({why}); {_LEFT}"
    return result if isinstance(result, Tensor) else f"its constant operand {node.name} is not a tensor; {_LEFT}"
