"""Folded vs unfolded agreement while serving, by the rule of the repository contract (bnfold.contract.agreement).

Each output of the folded variant (candidate) is judged against the unfolded one (reference): AGREE,
DISAGREE or INCONCLUSIVE (some position where the two differ has a NaN or ±Inf in unfolded, typically
finite inputs near the float range that overflow the unfolded graph's un-folded intermediates while folded
stays finite). What the service makes of the verdict:

    AGREE         counted as a check that agrees;
    DISAGREE      a mismatch, referred to the rounding referee (bnfold.service.referee): explained by
                  float32 rounding, it is counted and never fails over; confirmed, it is a defect of
                  folded, the only outcome that may fail over to unfolded;
    INCONCLUSIVE  counted apart as inconclusive, never a mismatch and never a fail-over; its figures are
                  not reported.

In JSON, figures that are not finite (an infinite max |Δ|) are null, since JSON has no NaN/Infinity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from bnfold.contract.agreement import OutputJudgement, Tolerance, Verdict, judge, overall
from bnfold.service.referee import Ruling
from bnfold.service.runtime import Tensors


@dataclass(frozen=True)
class Equivalence:
    """Agreement over all outputs of one check, and the referee's ruling when it disagrees."""

    outputs: tuple[OutputJudgement, ...]
    ruling: Ruling | None = None

    def ruled(self, ruling: Ruling) -> Equivalence:
        return replace(self, ruling=ruling)

    @property
    def rounding(self) -> bool:
        """A mismatch the referee explained by float32 rounding (not a defect of folded)."""
        return self.mismatch and self.ruling is not None and self.ruling.rounding

    @property
    def defect(self) -> bool:
        """A mismatch the referee confirmed (or could not rule on): folded is wrong here."""
        return self.mismatch and not self.rounding

    @cached_property
    def verdict(self) -> Verdict:
        return overall(self.outputs)

    @property
    def max_abs(self) -> float:
        return max(output.discrepancy.max_abs for output in self.outputs)

    @property
    def max_rel(self) -> float:
        return max(output.discrepancy.max_rel for output in self.outputs)

    @property
    def within_tolerance(self) -> bool:
        return all(output.within_tolerance for output in self.outputs)

    @property
    def argmax_agree(self) -> bool | None:
        flags = [output.argmax_agree for output in self.outputs if output.argmax_agree is not None]
        return all(flags) if flags else None

    @property
    def inconclusive(self) -> bool:
        """Some output differs where unfolded (the reference) is not finite: the check can neither pass nor fail."""
        return self.verdict is Verdict.INCONCLUSIVE

    @property
    def agree(self) -> bool:
        """Conclusively in agreement (false for inconclusive checks, which are not mismatches either)."""
        return self.verdict is Verdict.AGREE

    @property
    def mismatch(self) -> bool:
        """Conclusively out of tolerance (or arg-max differs): the only outcome that may fail over."""
        return self.verdict is Verdict.DISAGREE

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
                "rounding_explained": None,
            }
        return {
            "agree": self.agree,
            "inconclusive": False,
            "max_abs_diff": finite_or_none(self.max_abs),
            "max_rel_diff": finite_or_none(self.max_rel),
            "within_tolerance": self.within_tolerance,
            "argmax_agree": self.argmax_agree,
            "rounding_explained": self.rounding if self.mismatch else None,
        }

    def describe(self) -> str:
        if self.inconclusive:
            unjudged = next(output for output in self.outputs if output.verdict is Verdict.INCONCLUSIVE)
            return f"inconclusive: unfolded {unjudged.describe()}"
        worst = max(self.outputs, key=lambda output: output.discrepancy.max_abs)
        argmax = "" if self.argmax_agree is not False else ", arg-max differs"
        found = worst.discrepancy
        ruling = f"; {self.ruling.reason}" if self.ruling is not None else ""
        return f"output {worst.name!r}: max |Δ| = {found.max_abs:.3e} (rel {found.max_rel:.3e}){argmax}{ruling}"


def compare(folded: Tensors, unfolded: Tensors, atol: float, rtol: float, classifier: bool) -> Equivalence:
    """Judge every output of the folded variant against the unfolded one."""
    tolerance = Tolerance(atol, rtol)
    return Equivalence(
        tuple(
            judge(folded[name], reference, tolerance, classifier=classifier, name=name)
            for name, reference in unfolded.items()
        )
    )


def finite_or_none(value: float) -> float | None:
    """The value, or None when it is NaN or ±Inf (JSON cannot carry them)."""
    return value if math.isfinite(value) else None
