"""The checks that prove a folded/unfolded pair deployable; needs only onnx, onnxruntime and numpy.

1. `onnx.checker.check_model(full_check=True)` passes on both graphs.
2. The unfolded graph has exactly one BatchNormalization node per BN of the fold report (entries of kind
   "batchnorm"; a frozen BN is a Mul/Add pair there) (the exporter folded none of them, not even some), and
   the folded one only as many as the fold report says were kept.
3. Both graphs run in onnxruntime with every graph optimisation disabled (ORT_DISABLE_ALL, so ORT cannot
   fuse Conv+BN itself) and match the reference on the calibration batch within the tolerance:

       max |candidate − reference| ≤ atol + rtol · max |reference|     (per output; the repository rule)

   The reference is the PyTorch model when there is one (fold-and-export), else the unfolded graph (verify).
   The rule, and its one non-finite policy, is bnfold.contract.agreement's. An INCONCLUSIVE verdict (the
   reference is NaN/Inf where the variant differs from it) refuses to certify the entry: the calibration
   inputs must lie in the model's range.
4. For classification, the arg-max of both variants agrees on every calibration sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from bnfold.contract.agreement import OutputJudgement, Tolerance, Verdict, argmax_mismatches, judge
from bnfold.contract.op_count import count_op
from bnfold.folding.report import Action, FoldReport
from bnfold.models.errors import VerificationError


@dataclass(frozen=True)
class Agreement:
    """The judgement on the worst output of one variant against the reference."""

    variant: str
    judgement: OutputJudgement

    @property
    def max_abs(self) -> float:
        return self.judgement.discrepancy.max_abs

    @property
    def bound(self) -> float:
        return self.judgement.bound

    @property
    def ok(self) -> bool:
        return self.judgement.verdict is Verdict.AGREE


def count_batchnorm(model: onnx.ModelProto) -> int:
    """BatchNormalization nodes in the main graph, its subgraphs and its local functions."""
    return count_op(model, "BatchNormalization")


def check_onnx(path: Path, variant: str) -> onnx.ModelProto:
    """Run onnx.checker (full check) on one variant's file, its external data included (resolved relative to
    the file, so any size works); returns the graph without its external tensors loaded."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as error:  # the checker raises several unrelated types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise VerificationError(f"onnx.checker rejects {variant}.onnx: {first}") from None
    return model


def batchnorm_totals(report: FoldReport) -> tuple[int, int]:
    """(total, kept) over the report's entries of kind "batchnorm": the only ones that exist as
    BatchNormalization nodes in an exported graph. A frozen BatchNorm or another per-channel affine map is
    a Mul/Add pair in unfolded.onnx, so it is not counted here."""
    batchnorms = [entry for entry in report.entries if entry.kind == "batchnorm"]
    return len(batchnorms), sum(entry.action is Action.KEPT for entry in batchnorms)


def check_batchnorm_counts(unfolded: int, folded: int, total: int, kept: int) -> None:
    """Rule 2: unfolded has exactly as many BN nodes as the fold report has BN ops (`total`: the PyTorch
    model's BN calls, or the input graph's BN nodes for an .onnx input; per-channel Mul/Add maps are not BN
    ops and not counted), and folded only the kept ones."""
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


def run_onnx(path: Path, feeds: Mapping[str, NDArray[Any]]) -> list[NDArray[Any]]:
    """Run a graph file in onnxruntime on CPU with all graph optimisations disabled (external data is
    resolved relative to the file). Weight pre-packing is off: a session that runs once gains nothing from it,
    and without it onnxruntime memory-maps external data instead of copying and re-packing every weight (a
    large model would need twice its size in memory)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [np.asarray(output) for output in session.run(None, dict(feeds))]


def agreement(
    variant: str,
    outputs: Sequence[NDArray[Any]],
    reference: Sequence[NDArray[Any]],
    atol: float,
    rtol: float,
    names: Sequence[str] | None = None,
) -> Agreement:
    """The worst output of `variant` against `reference`: an inconclusive one first, else the one furthest over
    (or least under) its bound."""
    if len(outputs) != len(reference):
        raise VerificationError(f"{variant}.onnx has {len(outputs)} outputs, the reference {len(reference)}")
    if not outputs:
        raise VerificationError(f"{variant}.onnx has no outputs")
    labels = list(names) if names is not None else [f"#{index}" for index in range(len(outputs))]
    judgements = []
    for label, candidate, expected in zip(labels, outputs, reference, strict=True):
        if candidate.shape != expected.shape:
            raise VerificationError(
                f"{variant}.onnx output {label!r} has shape {candidate.shape}, the reference {expected.shape}"
            )
        judgements.append(judge(candidate, expected, Tolerance(atol, rtol), classifier=False, name=label))
    worst = max(judgements, key=_badness)
    return Agreement(variant, worst)


def _badness(judgement: OutputJudgement) -> tuple[bool, float]:
    inconclusive = judgement.verdict is Verdict.INCONCLUSIVE
    return inconclusive, judgement.discrepancy.max_abs - judgement.bound


def require(found: Agreement, against: str) -> None:
    """VerificationError unless `found` agrees; an inconclusive check is refused, never certified."""
    judgement = found.judgement
    if judgement.verdict is Verdict.INCONCLUSIVE:
        raise VerificationError(
            f"cannot certify {found.variant}.onnx against {against}: output {judgement.name!r} is NaN or Inf in "
            f"the reference at index {judgement.discrepancy.unjudged} where {found.variant}.onnx differs; "
            "use calibration inputs in the model's range"
        )
    if not found.ok:
        raise VerificationError(
            f"{found.variant}.onnx differs from {against} by max |Δ| = {found.max_abs:.3e}, over the "
            f"tolerance {found.bound:.3e} on the calibration batch"
        )


def require_same_argmax(unfolded: Sequence[NDArray[Any]], folded: Sequence[NDArray[Any]]) -> None:
    """Rule 4, on the first output (the logits), by the contract's arg-max (bnfold.contract.agreement)."""
    disagree = argmax_mismatches(folded[0], unfolded[0])
    if disagree:
        raise VerificationError(f"folded and unfolded predict different classes for {disagree} calibration sample(s)")
