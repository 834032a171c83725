"""Run a GraphModule node by node on the example inputs and keep what the fold report measures.

Both the unfolded and the folded graph run under the same RNG seed with no autograd, so dropout in a
model left in training mode draws the same masks in both. Buffers a training-mode BN would update are
restored afterwards: measuring never changes the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx
from torch.utils import _pytree

from bnfold.contract.agreement import discrepancy
from bnfold.folding.errors import FoldingError


@dataclass
class Recording:
    """The graph's output, the kept nodes' values and the compared nodes' errors (by node name), and every
    tensor node's ndim, shape and dtype."""

    output: Any
    values: dict[str, Tensor] = field(default_factory=dict)
    errors: dict[str, float | None] = field(default_factory=dict)
    ndims: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)


class _Recorder(fx.Interpreter):
    def __init__(
        self, graph_module: fx.GraphModule, keep: set[str], compare: dict[str, Tensor], recording: Recording
    ) -> None:
        super().__init__(graph_module)
        self.keep, self.compare, self.recording = keep, compare, recording

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, Tensor):
            self.recording.ndims[n.name] = result.dim()
            self.recording.shapes[n.name] = tuple(result.shape)
            self.recording.dtypes[n.name] = result.dtype
            if n.name in self.keep:  # cloned: a later in-place op (ReLU(inplace=True)) would overwrite it
                self.recording.values[n.name] = result.detach().clone()
            if n.name in self.compare:  # compared now, before any in-place op: no copy needed
                self.recording.errors[n.name] = max_abs_error(result, self.compare[n.name])
        return result


@contextmanager
def _untouched(graph_module: fx.GraphModule) -> Iterator[None]:
    """Restore the buffers of training-mode modules (BN running statistics) on exit."""
    saved = [
        (buffer, buffer.detach().clone())
        for module in graph_module.modules()
        if module.training
        for buffer in module.buffers(recurse=False)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def record(
    graph_module: fx.GraphModule,
    inputs: tuple[Tensor, ...],
    keep: set[str],
    compare: dict[str, Tensor] | None = None,
) -> Recording:
    """Run the graph on `inputs`, keeping the values of the nodes named in `keep` and measuring the max abs
    error of each node named in `compare` against the reference tensor given there."""
    recording = Recording(output=None)
    try:
        with torch.no_grad(), _untouched(graph_module), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            fresh = tuple(x.clone() for x in inputs)  # a forward that writes to its input must not leak
            recording.output = _Recorder(graph_module, keep, compare or {}, recording).run(*fresh)
    except Exception as error:  # the user's forward can raise anything on unsuitable inputs
        first_line = (str(error).strip().splitlines() or ["no message"])[0]
        raise FoldingError(
            f"the model fails on example_inputs ({type(error).__name__}: {first_line}); "
            "pass example inputs of the shape and dtype its forward expects"
        ) from None
    return recording


def max_abs_error(candidate: Tensor | None, reference: Tensor | None) -> float | None:
    """max |candidate − reference| (None when either is missing or the shapes differ).

    The non-finite policy is the contract's (bnfold.contract.agreement): identical elements (equal
    infinities, NaN for NaN: a kept BN whose statistics divide by zero) count as agreement, any other NaN/Inf
    on either side is an infinite error. The common all-finite case is computed with torch in the
    activations' own precision (float32: the difference of two close float32 values is exact, Sterbenz):
    activations of a 224×224 ResNet are large, and a float64 pass costs as much as a forward pass. When that
    maximum is not finite, the contract's float64 rule decides.
    """
    if candidate is None or reference is None or candidate.shape != reference.shape:
        return None
    a, b = candidate.detach(), reference.detach()
    if a.numel() == 0:
        return 0.0
    if not a.is_floating_point():  # integer or boolean outputs (indices, masks)
        a, b = a.double(), b.double()
    elif a.dtype in (torch.float16, torch.bfloat16):  # float32 holds every difference of two half values
        a, b = a.float(), b.float()
    worst = (a - b).abs().max()  # NaN propagates through max: then the contract's rule decides
    if bool(torch.isfinite(worst)):
        return float(worst)
    return discrepancy(a.double().cpu().numpy(), b.double().cpu().numpy()).max_abs


def output_error(candidate: Any, reference: Any) -> float | None:
    """The largest max-abs error over all tensor leaves of two (nested) model outputs."""
    pairs = zip(_pytree.tree_leaves(candidate), _pytree.tree_leaves(reference), strict=False)
    errors = [max_abs_error(a, b) for a, b in pairs if isinstance(a, Tensor) and isinstance(b, Tensor)]
    known = [error for error in errors if error is not None]
    return max(known) if known else None
