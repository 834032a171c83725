"""The agreement rule of the repository contract: does a candidate output agree with a reference output?

Both are compared in float64, element by element. The error at a position i is

    e_i = 0                   where a_i and b_i are identical (equal numbers, equal infinities of the same
                              sign, or NaN against NaN),
    e_i = ∞                   elsewhere, where a_i or b_i is NaN or ±Inf,
    e_i = |a_i − b_i|         elsewhere (∞ too when the difference overflows float64),

with a the candidate and b the reference. Then

    max_abs = max_i e_i,   scale = max |b_i| over the finite b_i (0 when there is none),
    max_rel = max_abs / scale   (0 when max_abs = 0, ∞ when scale = 0 < max_abs),
    within  ⇔  max_abs ≤ atol + rtol · scale.

The error is judged against the scale of the whole reference, not element by element (an element-wise
relative error is meaningless near zero). For classifiers the arg-max over the last axis must also be equal
for every sample (np.argmax: the first maximal index wins ties, and NaN counts as larger than every number,
the first NaN winning; a NaN the two outputs do not share already makes the verdict DISAGREE or
INCONCLUSIVE).

The verdict is three-valued:

    INCONCLUSIVE  some position where a and b differ has a non-finite reference b_i: with no finite
                  reference there is nothing to judge the candidate against (it takes precedence);
    AGREE         within the tolerance and, for classifiers, every arg-max equal;
    DISAGREE      otherwise (including outputs of different shapes).

Callers decide what INCONCLUSIVE means and say so: the fold-time checks refuse to certify, the service's
serving-time checks count it apart (never a mismatch, never a fail-over).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np
from numpy.typing import ArrayLike, NDArray

# rtol by dtype: a few ulps of float32 accumulated over a deep network, looser for half precision.
DEFAULT_RTOL: dict[str, float] = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}
DEFAULT_ATOL: dict[str, float] = {"float64": 1e-12, "float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}


class Verdict(Enum):
    AGREE = "agree"
    DISAGREE = "disagree"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Tolerance:
    """Agreement rule max_abs ≤ atol + rtol · scale."""

    atol: float
    rtol: float

    @classmethod
    def for_dtype(cls, dtype: str) -> Tolerance:
        """The default tolerance for a dtype name such as 'float32' or 'torch.float16'."""
        name = dtype.removeprefix("torch.")
        if name not in DEFAULT_RTOL:
            raise ValueError(f"no default tolerance for dtype {dtype!r}; known: {sorted(DEFAULT_RTOL)}")
        return cls(atol=DEFAULT_ATOL[name], rtol=DEFAULT_RTOL[name])

    def bound(self, scale: float) -> float:
        """atol + rtol · scale."""
        return self.atol + self.rtol * scale

    def to_json(self) -> dict[str, float]:
        return {"atol": self.atol, "rtol": self.rtol}


@dataclass(frozen=True)
class Discrepancy:
    """How far a candidate is from a reference: max_abs at index `where`, max_rel = max_abs / scale, and
    `unjudged`, the first index where the two differ and the reference is not finite (None if there is none)."""

    max_abs: float
    max_rel: float
    reference_scale: float
    where: tuple[int, ...]
    unjudged: tuple[int, ...] | None = None

    @property
    def inconclusive(self) -> bool:
        return self.unjudged is not None

    def within(self, tolerance: Tolerance) -> bool:
        return self.max_abs <= tolerance.bound(self.reference_scale)

    def describe(self) -> str:
        return (
            f"max |Δ| = {self.max_abs:.3e} at index {self.where} "
            f"({self.max_rel:.3e} of max |reference| = {self.reference_scale:.3e})"
        )


NO_DISCREPANCY = Discrepancy(0.0, 0.0, 0.0, ())


def discrepancy(candidate: ArrayLike, reference: ArrayLike) -> Discrepancy:
    """The errors of `candidate` against `reference` by the rule above; ValueError when the shapes differ."""
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: candidate {a.shape} vs reference {b.shape}")
    if a.size == 0:
        return NO_DISCREPANCY
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(a - b)
    flat = int(error.argmax())  # the first NaN when there is one
    worst = float(error.flat[flat])
    if math.isfinite(worst):  # every |a − b| finite: a and b are finite everywhere
        return _figures(worst, flat, float(np.abs(b).max()), a.shape)
    return _non_finite(a, b, error)


def _non_finite(a: NDArray[np.float64], b: NDArray[np.float64], error: NDArray[np.float64]) -> Discrepancy:
    """The careful path: identical positions are 0, other positions with a NaN or ±Inf are ∞."""
    identical = (a == b) | (np.isnan(a) & np.isnan(b))
    error = np.where(identical, 0.0, np.where(np.isnan(error), np.inf, error))
    flat = int(np.argmax(error))
    finite = np.isfinite(b)
    scale = float(np.max(np.abs(b[finite]))) if finite.any() else 0.0
    found = _figures(float(error.flat[flat]), flat, scale, a.shape)
    unjudged = np.flatnonzero(~identical & ~finite)
    if unjudged.size == 0:
        return found
    return Discrepancy(found.max_abs, found.max_rel, scale, found.where, _index(int(unjudged[0]), a.shape))


def _figures(max_abs: float, flat: int, scale: float, shape: tuple[int, ...]) -> Discrepancy:
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return Discrepancy(max_abs=max_abs, max_rel=max_rel, reference_scale=scale, where=_index(flat, shape))


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def argmax_mismatches(candidate: ArrayLike, reference: ArrayLike) -> int:
    """Samples whose arg-max over the last axis differs (0 for a 0-d or empty output: nothing to compare)."""
    a, b = np.asarray(candidate), np.asarray(reference)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: candidate {a.shape} vs reference {b.shape}")
    if a.ndim == 0 or a.size == 0:
        return 0
    return int((a.argmax(axis=-1) != b.argmax(axis=-1)).sum())


@dataclass(frozen=True)
class OutputJudgement:
    """The verdict on one output: its discrepancy, the bound it had to meet and (classifiers) the arg-max."""

    name: str
    discrepancy: Discrepancy
    bound: float
    argmax_agree: bool | None  # None: not a classifier, or not judged (inconclusive, or nothing to compare)
    verdict: Verdict

    @property
    def within_tolerance(self) -> bool:
        return self.discrepancy.max_abs <= self.bound

    def describe(self) -> str:
        found = self.discrepancy
        if self.verdict is Verdict.INCONCLUSIVE:
            return (
                f"output {self.name!r} at index {found.unjudged}: the reference is not finite there, "
                "so there is no finite reference to judge the candidate against"
            )
        argmax = ", arg-max differs" if self.argmax_agree is False else ""
        return f"output {self.name!r}: {found.describe()}, bound {self.bound:.3e}{argmax}"


SHAPE_MISMATCH = Discrepancy(math.inf, math.inf, 0.0, ())


def judge(
    candidate: ArrayLike, reference: ArrayLike, tolerance: Tolerance, *, classifier: bool, name: str = "output"
) -> OutputJudgement:
    """The verdict on one output by the rule of this module (a shape mismatch is DISAGREE with ∞ error)."""
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        argmax = False if classifier else None
        return OutputJudgement(name, SHAPE_MISMATCH, tolerance.atol, argmax, Verdict.DISAGREE)
    found = discrepancy(a, b)
    bound = tolerance.bound(found.reference_scale)
    if found.inconclusive:
        return OutputJudgement(name, found, bound, None, Verdict.INCONCLUSIVE)
    argmax = None
    if classifier and a.ndim >= 1 and a.size:
        argmax = argmax_mismatches(a, b) == 0
    agree = found.max_abs <= bound and argmax is not False
    return OutputJudgement(name, found, bound, argmax, Verdict.AGREE if agree else Verdict.DISAGREE)


def overall(judgements: Iterable[OutputJudgement]) -> Verdict:
    """INCONCLUSIVE if any output is, else AGREE if every output agrees, else DISAGREE."""
    verdicts = {judgement.verdict for judgement in judgements}
    if Verdict.INCONCLUSIVE in verdicts:
        return Verdict.INCONCLUSIVE
    return Verdict.DISAGREE if Verdict.DISAGREE in verdicts else Verdict.AGREE
