"""Folded vs unfolded agreement, by the rule of the repository contract (docs/repository-format.md).

For each output, with f the folded and u the unfolded tensor (compared in float64):

    max_abs = max |f − u|,   scale = max |u|,   max_rel = max_abs / scale
    within  ⇔  max_abs ≤ atol + rtol · scale

NaN in f where u is not NaN counts as an infinite error. For classifiers the arg-max over the last axis
must also agree on every sample. Two variants agree when every output is within tolerance and (for
classifiers) every arg-max agrees. Same rule as folding/compare.py, re-implemented here because the
service must not import bnfold.folding.

A check is *inconclusive* when any unfolded (reference) output holds NaN or ±Inf: with no finite reference
there is nothing to judge folded against (typically finite inputs near the float range overflow the
unfolded graph's un-folded intermediates while folded stays finite). An inconclusive check neither agrees
nor mismatches; its figures are not reported. In JSON, figures that are not finite (an infinite max |Δ|)
are null, since JSON has no NaN/Infinity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnfold.service.runtime import Tensors


@dataclass(frozen=True)
class OutputAgreement:
    """Agreement of one output between the two variants."""

    name: str
    max_abs: float
    max_rel: float
    within_tolerance: bool
    argmax_agree: bool | None
    reference_finite: bool = True


@dataclass(frozen=True)
class Equivalence:
    """Agreement over all outputs of one check."""

    outputs: tuple[OutputAgreement, ...]

    @property
    def max_abs(self) -> float:
        return max(output.max_abs for output in self.outputs)

    @property
    def max_rel(self) -> float:
        return max(output.max_rel for output in self.outputs)

    @property
    def within_tolerance(self) -> bool:
        return all(output.within_tolerance for output in self.outputs)

    @property
    def argmax_agree(self) -> bool | None:
        flags = [output.argmax_agree for output in self.outputs if output.argmax_agree is not None]
        return all(flags) if flags else None

    @property
    def inconclusive(self) -> bool:
        """Some unfolded (reference) output is not finite: the check can neither pass nor fail."""
        return any(not output.reference_finite for output in self.outputs)

    @property
    def agree(self) -> bool:
        """Conclusively in agreement (false for inconclusive checks, which are not mismatches either)."""
        return not self.inconclusive and self.within_tolerance and self.argmax_agree is not False

    @property
    def mismatch(self) -> bool:
        """Conclusively out of tolerance (or arg-max differs): the only outcome that may fail over."""
        return not self.inconclusive and not self.agree

    def to_json(self) -> dict[str, Any]:
        """JSON-safe summary: inconclusive checks report only `inconclusive`; non-finite figures are null."""
        if self.inconclusive:
            return {
                "agree": None,
                "inconclusive": True,
                "max_abs_diff": None,
                "max_rel_diff": None,
                "within_tolerance": None,
                "argmax_agree": None,
            }
        return {
            "agree": self.agree,
            "inconclusive": False,
            "max_abs_diff": finite_or_none(self.max_abs),
            "max_rel_diff": finite_or_none(self.max_rel),
            "within_tolerance": self.within_tolerance,
            "argmax_agree": self.argmax_agree,
        }

    def describe(self) -> str:
        if self.inconclusive:
            names = [output.name for output in self.outputs if not output.reference_finite]
            return f"inconclusive: unfolded output(s) {names} hold NaN or Inf, so there is no finite reference"
        worst = max(self.outputs, key=lambda output: output.max_abs)
        argmax = "" if self.argmax_agree is not False else ", arg-max differs"
        return f"output {worst.name!r}: max |Δ| = {worst.max_abs:.3e} (rel {worst.max_rel:.3e}){argmax}"


def compare(folded: Tensors, unfolded: Tensors, atol: float, rtol: float, classifier: bool) -> Equivalence:
    """Compare every output of the folded variant with the unfolded one."""
    return Equivalence(
        tuple(
            _compare_output(name, folded[name], reference, atol, rtol, classifier)
            for name, reference in unfolded.items()
        )
    )


def _compare_output(
    name: str, candidate: np.ndarray, reference: np.ndarray, atol: float, rtol: float, classifier: bool
) -> OutputAgreement:
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        return OutputAgreement(name, float("inf"), float("inf"), False, False if classifier else None)
    if not np.isfinite(b).all():  # no finite reference: inconclusive, no figures
        return OutputAgreement(name, float("nan"), float("nan"), False, None, reference_finite=False)
    # b is finite from here on, so a NaN in |a − b| comes from a NaN in a: an infinite error.
    max_abs = float(np.abs(a - b).max()) if a.size else 0.0
    if math.isnan(max_abs):
        max_abs = math.inf
    scale = float(np.abs(b).max()) if b.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    argmax = None
    if classifier and a.ndim >= 1 and a.size:
        argmax = bool(np.array_equal(np.argmax(a, axis=-1), np.argmax(b, axis=-1)))
    return OutputAgreement(name, max_abs, max_rel, max_abs <= atol + rtol * scale, argmax)


def finite_or_none(value: float) -> float | None:
    """The value, or None when it is NaN or ±Inf (JSON cannot carry them)."""
    return value if math.isfinite(value) else None
