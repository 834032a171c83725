"""The rounding referee: is a serving-time disagreement float32 rounding, or a defect of the folded model?

A check that the contract's rule (bnfold.contract.agreement) judges DISAGREE is referred here. Folded and
unfolded compute the same function in different float32 arithmetic; far outside the training range (inputs
at 1000× their scale, say) the rounding of either can exceed the tolerance, and at an input that ties two
logits one ulp can flip the arg-max. Neither is a defect of folded.

The referee measures the size of float32 rounding at the offending input x from the unfolded graph itself:
unfolded is run again on x⁺ and x⁻, every element moved one float32 ulp up and down (np.nextafter), and

    r = max(max|unfolded(x⁺) − unfolded(x)|, max|unfolded(x⁻) − unfolded(x)|)        (per output)

is how far one ulp of input rounding moves unfolded's output there. The disagreement is explained by
rounding when, for every output, by the contract's rule with a widened tolerance

    max|folded − unfolded| ≤ (atol + ROUNDING_FACTOR · r) + rtol · scale,

and, for classifiers, every sample whose arg-max differs is a tie within the same bound: the two logits
that the variants picked differ in unfolded by at most that bound. Otherwise the defect is confirmed.
ROUNDING_FACTOR = 4: on the zoo (4 models × input scales 1–10⁵ × 30 random batches of calibration samples)
folded's error against unfolded was within 4 r + the tolerance in all 600 trials, and at most 2.9 r in every
batch where it exceeded the tolerance alone; a folded model that clips its input is caught by orders of
magnitude (tests/service/test_referee.py).

Why not a float64 copy of the unfolded graph: onnxruntime's CPU provider has no float64 kernel for Conv,
ConvTranspose, AveragePool or GlobalAveragePool, so such a copy cannot run for most models.

No referee (a check stands as the contract judged it: a disagreement is a confirmed defect) when an input is
not floating point or r is not finite.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from bnfold.contract.agreement import Tolerance, discrepancy, judge
from bnfold.service.runtime import Tensors

ROUNDING_FACTOR = 4.0
RunUnfolded = Callable[[Tensors], Awaitable[Tensors]]


@dataclass(frozen=True)
class Ruling:
    """The referee's decision on one disagreement: rounding (not a defect) or a confirmed defect."""

    rounding: bool
    reason: str


async def referee(
    run_unfolded: RunUnfolded,
    inputs: Tensors,
    folded: Tensors,
    unfolded: Tensors,
    tolerance: Tolerance,
    classifier: bool,
) -> Ruling:
    """Rule on a disagreement of `folded` with `unfolded` at `inputs` (see the module docstring)."""
    if not all(np.issubdtype(array.dtype, np.floating) for array in inputs.values()):
        return Ruling(False, "no rounding referee for non-floating-point inputs")
    scales = {name: 0.0 for name in unfolded}
    for direction in (np.inf, -np.inf):
        moved = {name: np.nextafter(array, array.dtype.type(direction)) for name, array in inputs.items()}
        outputs = await run_unfolded(moved)
        for name, reference in unfolded.items():
            scales[name] = max(scales[name], discrepancy(outputs[name], reference).max_abs)
    return rule(folded, unfolded, scales, tolerance, classifier)


def rule(
    folded: Tensors, unfolded: Tensors, scales: dict[str, float], tolerance: Tolerance, classifier: bool
) -> Ruling:
    """Rounding iff every output is within the widened tolerance and every arg-max flip is a tie."""
    for name, reference in unfolded.items():
        r = scales[name]
        if not math.isfinite(r):
            return Ruling(False, f"output {name!r}: the rounding scale is not finite, no referee")
        widened = Tolerance(tolerance.atol + ROUNDING_FACTOR * r, tolerance.rtol)
        found = judge(folded[name], reference, widened, classifier=False, name=name)
        if not found.within_tolerance:
            return Ruling(False, f"{found.describe()} (rounding scale r = {r:.3e}, bound {ROUNDING_FACTOR:g}·r + tol)")
        if classifier and not _flips_are_ties(folded[name], reference, found.bound):
            return Ruling(False, f"output {name!r}: arg-max differs beyond a tie within {found.bound:.3e}")
    summary = ", ".join(f"{name!r} r = {r:.3e}" for name, r in scales.items())
    return Ruling(True, f"explained by float32 rounding ({summary}, factor {ROUNDING_FACTOR:g})")


def _flips_are_ties(folded: np.ndarray, unfolded: np.ndarray, bound: float) -> bool:
    """Every sample whose arg-max differs has |unfolded[picked by folded] − unfolded[picked by unfolded]| ≤ bound."""
    if folded.ndim == 0 or folded.size == 0:
        return True
    a = np.asarray(folded, np.float64).reshape(-1, folded.shape[-1])
    b = np.asarray(unfolded, np.float64).reshape(-1, unfolded.shape[-1])
    picked_a, picked_b = a.argmax(axis=-1), b.argmax(axis=-1)
    rows = np.flatnonzero(picked_a != picked_b)
    gaps = np.abs(b[rows, picked_b[rows]] - b[rows, picked_a[rows]])
    return bool(np.all(gaps <= bound))
