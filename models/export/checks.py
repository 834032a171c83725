"""The checks that prove a folded/unfolded pair deployable; needs only onnx, onnxruntime and numpy.

1. `onnx.checker.check_model(full_check=True)` passes on both graphs.
2. The unfolded graph has exactly one BatchNormalization node per BN of the fold report (the exporter folded
   none of them, not even some), and the folded one only as many as the fold report says were kept.
3. Both graphs run in onnxruntime with every graph optimisation disabled (ORT_DISABLE_ALL, so ORT cannot
   fuse Conv+BN itself) and match the reference on the calibration batch within the tolerance:

       max |candidate − reference| ≤ atol + rtol · max |reference|     (per output; the repository rule)

   The reference is the PyTorch model when there is one (fold-and-export), else the unfolded graph (verify).
4. For classification, the arg-max of both variants agrees on every calibration sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from bnfold.models.errors import VerificationError


@dataclass(frozen=True)
class Agreement:
    """The worst output error of one variant against the reference, and the bound it had to meet."""

    variant: str
    max_abs: float
    bound: float

    @property
    def ok(self) -> bool:
        return bool(self.max_abs <= self.bound)


def count_batchnorm(model: onnx.ModelProto) -> int:
    """BatchNormalization nodes in the main graph, its subgraphs and its local functions."""
    return _count(model.graph.node) + sum(_count(function.node) for function in model.functions)


def _count(nodes: Iterable[onnx.NodeProto]) -> int:
    total = 0
    for node in nodes:
        total += node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx")
        for attribute in node.attribute:
            total += _count(attribute.g.node) if attribute.HasField("g") else 0
            total += sum(_count(graph.node) for graph in attribute.graphs)
    return total


def check_onnx(model_bytes: bytes, variant: str) -> onnx.ModelProto:
    """Parse and run onnx.checker (full check) on one variant."""
    try:
        model = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # the checker raises several unrelated types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise VerificationError(f"onnx.checker rejects {variant}.onnx: {first}") from None
    return model


def check_batchnorm_counts(unfolded: int, folded: int, total: int, kept: int) -> None:
    """Rule 2: unfolded has exactly as many BN nodes as the fold report has BNs (`total`: the PyTorch model's
    BN calls, or the input graph's BN nodes for an .onnx input), and folded only the kept ones."""
    if unfolded < total:
        raise VerificationError(
            f"unfolded.onnx has {unfolded} BatchNormalization node(s) but the fold report lists {total} BatchNorms: "
            "the exporter folded some of them; export with the dynamo exporter and optimize=False"
        )
    if unfolded > total:
        raise VerificationError(
            f"unfolded.onnx has {unfolded} BatchNormalization node(s) but the fold report lists only {total} "
            "BatchNorms: the report does not describe this graph; rebuild the entry with bnfold fold-and-export"
        )
    if folded > kept:
        raise VerificationError(
            f"folded.onnx still has {folded} BatchNormalization node(s) but the fold report keeps only {kept}"
        )


def run_onnx(model_bytes: bytes, feeds: Mapping[str, NDArray[Any]]) -> list[NDArray[Any]]:
    """Run a graph in onnxruntime on CPU with all graph optimisations disabled."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return [np.asarray(output) for output in session.run(None, dict(feeds))]


def agreement(
    variant: str, outputs: Sequence[NDArray[Any]], reference: Sequence[NDArray[Any]], atol: float, rtol: float
) -> Agreement:
    """The worst error over all outputs of `variant` against `reference` (NaN or Inf count as infinite)."""
    if len(outputs) != len(reference):
        raise VerificationError(f"{variant}.onnx has {len(outputs)} outputs, the reference {len(reference)}")
    worst: Agreement | None = None
    for candidate, expected in zip(outputs, reference, strict=True):
        if candidate.shape != expected.shape:
            raise VerificationError(
                f"{variant}.onnx output shape {candidate.shape} differs from the reference {expected.shape}"
            )
        a, b = candidate.astype(np.float64), expected.astype(np.float64)
        error = float(np.max(np.abs(a - b))) if a.size else 0.0
        error = error if np.isfinite(error) else float("inf")
        bound = atol + rtol * (float(np.max(np.abs(b))) if b.size else 0.0)
        if worst is None or error - bound > worst.max_abs - worst.bound:
            worst = Agreement(variant, error, bound)
    if worst is None:
        raise VerificationError(f"{variant}.onnx has no outputs")
    return worst


def require(found: Agreement, against: str) -> None:
    if not found.ok:
        raise VerificationError(
            f"{found.variant}.onnx differs from {against} by max |Δ| = {found.max_abs:.3e}, over the "
            f"tolerance {found.bound:.3e} on the calibration batch"
        )


def require_same_argmax(unfolded: Sequence[NDArray[Any]], folded: Sequence[NDArray[Any]]) -> None:
    """Rule 4, on the first output (the logits)."""
    disagree = int(np.sum(np.argmax(unfolded[0], axis=-1) != np.argmax(folded[0], axis=-1)))
    if disagree:
        raise VerificationError(f"folded and unfolded predict different classes for {disagree} calibration sample(s)")
