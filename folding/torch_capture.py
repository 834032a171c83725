"""Capture a PyTorch model as a torch.fx graph on a private copy, and validate the example inputs.

torch.fx `symbolic_trace` semantics with one change for BatchNorms (see BatchNormLeafTracer). Any failure to
trace becomes one `FoldingError` line naming the cause and what to try, never a tracer traceback.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnfold.folding.errors import FoldingError
from bnfold.folding.torch_conv_transpose import SEPARATE_BIAS_CLASSES
from bnfold.messages import first_line

_CAPTURE_ADVICE = (
    "torch.fx cannot trace Python control flow that depends on tensor values (if/while on a tensor, "
    ".item(), numpy calls); move it out of forward, wrap the offending function with torch.fx.wrap, "
    "or fold the traceable sub-modules one by one"
)


# SyncBatchNorm's forward only differs from BatchNorm's when training with a process group: in eval mode it
# is plain batch norm, and a BN in training mode is never folded anyway.
_STOCK_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def overrides_forward(module: nn.Module) -> bool:
    """True for a BatchNorm subclass whose class defines its own forward (it may do more than BN)."""
    cls = type(module)
    return isinstance(module, _BatchNorm) and not any(
        cls.forward is base.forward for base in (*_STOCK_BATCHNORMS, _BatchNorm)
    )


class BatchNormLeafTracer(fx.Tracer):
    """The default fx tracer, except for BatchNorms.

    A BN whose forward is the stock one is one leaf `call_module` node. A subclass that overrides forward is
    traced *through* (when trace_subclasses): its extra behaviour (an activation, a drop-path) becomes
    ordinary graph nodes that folding leaves in place, and its batch norm becomes a functional batch_norm
    call on its own buffers, which folds like any other. The shape check `_check_input_dim` (`if
    input.dim() != 4: raise`, untraceable) is skipped while tracing; it only raises on bad input.
    A ConvTranspose that an earlier fold turned into its SeparateBias subclass is one leaf too, as it was
    before that fold, so a folded model can be captured and folded again.
    """

    def __init__(self, trace_subclasses: bool = True) -> None:  # the default lets torch.load rebuild a graph
        super().__init__()
        self.trace_subclasses = trace_subclasses

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _BatchNorm):
            return not (self.trace_subclasses and overrides_forward(m))
        if type(m) in SEPARATE_BIAS_CLASSES:  # bnfold's own folded ConvTranspose: one layer, as before folding
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not (self.trace_subclasses and overrides_forward(m)):
            return super().call_module(m, forward, args, kwargs)
        m.__dict__["_check_input_dim"] = _no_check  # an instance attribute shadows the method
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            del m.__dict__["_check_input_dim"]


def _no_check(input: Tensor) -> None:
    """Stands in for _BatchNorm._check_input_dim while tracing."""


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
            f"cannot deep-copy {type(model).__name__} ({type(error).__name__}: {first_line(error)}); "
            "fold never mutates the caller's model, so the model must support copy.deepcopy"
        ) from None


def capture(model: nn.Module) -> fx.GraphModule:
    """Trace `model` (already a private copy) into a GraphModule that shares its sub-modules.

    BatchNorm subclasses overriding forward are traced through; when that fails (their forward is not
    traceable), they are traced again as leaves, to be reported as kept.
    """
    has_subclasses = any(overrides_forward(module) for module in model.modules())
    if has_subclasses:
        try:
            return _trace(model, trace_subclasses=True)
        except Exception:  # fall back to keeping the subclasses whole
            pass
    try:
        return _trace(model, trace_subclasses=False)
    except Exception as error:  # tracing executes arbitrary user code: any exception means "cannot capture"
        raise FoldingError(
            f"cannot capture {type(model).__name__} as a graph ({type(error).__name__}: "
            f"{first_line(error)}); {_CAPTURE_ADVICE}"
        ) from None


def _trace(model: nn.Module, *, trace_subclasses: bool) -> fx.GraphModule:
    tracer = BatchNormLeafTracer(trace_subclasses)
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)
