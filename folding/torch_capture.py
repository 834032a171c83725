"""Capture a PyTorch model as a torch.fx graph on a private copy, and validate the example inputs.

torch.fx `symbolic_trace` semantics with one change: every BatchNorm (including user subclasses) is a leaf
`call_module` node, so a subclass is judged as a whole (is its forward plain BN?) instead of being traced into
`_check_input_dim`, which cannot be traced. Any failure to trace becomes one `FoldingError` line naming the
cause and what to try, never a tracer traceback.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from folding.errors import FoldingError

_CAPTURE_ADVICE = (
    "torch.fx cannot trace Python control flow that depends on tensor values (if/while on a tensor, "
    ".item(), numpy calls); move it out of forward, wrap the offending function with torch.fx.wrap, "
    "or fold the traceable sub-modules one by one"
)


class BatchNormLeafTracer(fx.Tracer):
    """The default fx tracer, except that every `_BatchNorm` instance is kept as one leaf node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _BatchNorm) or super().is_leaf_module(m, module_qualified_name)


def normalise_inputs(example_inputs: object) -> tuple[Tensor, ...]:
    """Accept a tuple (or list) of tensors, or one bare tensor; anything else is a FoldingError."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if not isinstance(example_inputs, tuple | list) or not example_inputs:
        raise FoldingError(
            f"example_inputs must be a non-empty tuple of tensors, got {type(example_inputs).__name__}; "
            "pass e.g. (torch.randn(2, 3, 32, 32),)"
        )
    for position, value in enumerate(example_inputs):
        if not isinstance(value, Tensor):
            raise FoldingError(
                f"example_inputs[{position}] is a {type(value).__name__}, not a tensor; "
                "pass one tensor per forward argument"
            )
    return tuple(example_inputs)


def private_copy(model: object) -> nn.Module:
    """A deep copy of the caller's model, so nothing fold does can reach the caller's parameters."""
    if not isinstance(model, nn.Module):
        raise FoldingError(f"fold expects a torch.nn.Module, got {type(model).__name__}")
    try:
        return copy.deepcopy(model)
    except Exception as error:  # deepcopy raises anything a custom __deepcopy__ raises
        raise FoldingError(
            f"cannot deep-copy {type(model).__name__} ({type(error).__name__}: {_first_line(error)}); "
            "fold never mutates the caller's model, so the model must support copy.deepcopy"
        ) from None


def capture(model: nn.Module) -> fx.GraphModule:
    """Trace `model` (already a private copy) into a GraphModule that shares its sub-modules."""
    tracer = BatchNormLeafTracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:  # tracing executes arbitrary user code: any exception means "cannot capture"
        raise FoldingError(
            f"cannot capture {type(model).__name__} as a graph ({type(error).__name__}: "
            f"{_first_line(error)}); {_CAPTURE_ADVICE}"
        ) from None
    return fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)


def check_runs(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Raise FoldingError (one line) unless module(*inputs) runs."""
    try:
        with torch.no_grad():
            module(*inputs)
    except Exception as error:
        raise FoldingError(
            f"the model fails on example_inputs ({type(error).__name__}: {_first_line(error)}); "
            "pass example inputs of the shape and dtype the model's forward expects"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"
