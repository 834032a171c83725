"""The agreement rule of the contract at its edges, and against an independent element-by-element reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bnfold.contract.agreement import (
    Tolerance,
    Verdict,
    argmax_mismatches,
    discrepancy,
    judge,
    overall,
)

INF, NAN = math.inf, math.nan
TOLERANCE = Tolerance(atol=1e-6, rtol=1e-5)


def verdict(candidate: list[float], reference: list[float], classifier: bool = False) -> Verdict:
    return judge(np.array(candidate), np.array(reference), TOLERANCE, classifier=classifier).verdict


@pytest.mark.parametrize(
    ("candidate", "reference", "max_abs", "expected"),
    [([INF, 1.0], [INF, 1.0], 0.0, Verdict.AGREE),  # equal +inf: identical, no error
     ([-INF, 1.0], [-INF, 1.0], 0.0, Verdict.AGREE),  # equal -inf
     ([NAN, 1.0], [NAN, 1.0], 0.0, Verdict.AGREE),  # NaN against NaN
     ([INF, 1.0], [1.0, 1.0], INF, Verdict.DISAGREE),  # inf in the candidate only
     ([NAN, 1.0], [3.0, 1.0], INF, Verdict.DISAGREE),  # NaN against a number
     ([-INF, 1.0], [INF, 1.0], INF, Verdict.INCONCLUSIVE),  # opposite infinities: the reference is not finite
     ([1.0, 1.0], [INF, 1.0], INF, Verdict.INCONCLUSIVE),  # non-finite reference, finite candidate
     ([1.0, 1.0], [NAN, 1.0], INF, Verdict.INCONCLUSIVE),
     ([INF, 1.0], [NAN, 1.0], INF, Verdict.INCONCLUSIVE),
     ([1e308, 0.0], [-1e308, 0.0], INF, Verdict.DISAGREE)],  # finite values whose difference overflows float64
    ids=["equal_pos_inf", "equal_neg_inf", "nan_nan", "inf_candidate_only", "nan_vs_number", "opposite_inf",
         "inf_reference", "nan_reference", "inf_vs_nan_reference", "overflowing_difference"],
)  # fmt: skip
def test_non_finite_policy(candidate: list[float], reference: list[float], max_abs: float, expected: Verdict) -> None:
    found = discrepancy(candidate, reference)
    assert found.max_abs == max_abs
    assert verdict(candidate, reference) is expected
    assert found.inconclusive is (expected is Verdict.INCONCLUSIVE)
    if found.inconclusive:
        assert found.unjudged == (0,)


def test_scale_is_over_the_finite_reference_values_only() -> None:
    found = discrepancy([INF, 2.0, -4.0 + 1e-5], [INF, 2.0, -4.0])
    assert found.reference_scale == 4.0 and found.where == (2,)
    assert found.max_abs == pytest.approx(1e-5) and found.max_rel == pytest.approx(2.5e-6)
    assert found.within(Tolerance(0.0, 2.6e-6)) and not found.within(Tolerance(0.0, 2.4e-6))
    assert discrepancy([NAN], [NAN]).reference_scale == 0.0 and discrepancy([NAN], [NAN]).max_rel == 0.0


def test_bound_is_atol_plus_rtol_times_scale() -> None:
    reference = np.array([[10.0, -20.0, 5.0]])
    bound = 1e-6 + 1e-5 * 20.0
    assert verdict(list(reference[0] + [bound * 0.99, 0, 0]), list(reference[0])) is Verdict.AGREE
    assert verdict(list(reference[0] + [bound * 1.01, 0, 0]), list(reference[0])) is Verdict.DISAGREE
    assert judge(reference, reference, TOLERANCE, classifier=False).bound == pytest.approx(bound)


def test_zero_scale() -> None:
    assert discrepancy([0.0], [0.0]).max_rel == 0.0
    assert discrepancy([1e-7], [0.0]).max_rel == INF
    assert verdict([1e-7], [0.0]) is Verdict.AGREE and verdict([2e-6], [0.0]) is Verdict.DISAGREE


def test_empty_tensors_agree() -> None:
    found = discrepancy(np.zeros((0, 10)), np.zeros((0, 10)))
    assert (found.max_abs, found.max_rel, found.reference_scale, found.where) == (0.0, 0.0, 0.0, ())
    assert judge(np.zeros((0, 10)), np.zeros((0, 10)), TOLERANCE, classifier=True).verdict is Verdict.AGREE
    assert judge(np.zeros((2, 0)), np.zeros((2, 0)), TOLERANCE, classifier=True).argmax_agree is None
    assert argmax_mismatches(np.zeros((2, 0)), np.zeros((2, 0))) == 0


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"shapes differ: candidate \(2, 3\) vs reference \(3, 2\)"):
        discrepancy(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="shapes differ"):
        argmax_mismatches(np.zeros((2, 3)), np.zeros((3, 2)))
    judged = judge(np.zeros((2, 3)), np.zeros((3, 2)), TOLERANCE, classifier=True, name="logits")
    assert judged.verdict is Verdict.DISAGREE and judged.discrepancy.max_abs == INF and judged.argmax_agree is False


def test_classifier_argmax_on_the_last_axis_per_sample() -> None:
    reference = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.3]])
    swapped = np.array([[0.1, 0.4, 0.5], [0.3, 0.3, 0.3]])
    assert argmax_mismatches(swapped, reference) == 1
    assert verdict(swapped.tolist(), reference.tolist(), classifier=False) is Verdict.DISAGREE  # 0.1 off anyway
    close = reference + np.array([[0, 0, 0], [0, 0, 1e-7]])  # within tolerance, but a tie broken differently
    judged = judge(close, reference, TOLERANCE, classifier=True)
    assert judged.within_tolerance and judged.argmax_agree is False and judged.verdict is Verdict.DISAGREE
    assert judge(close, reference, TOLERANCE, classifier=False).verdict is Verdict.AGREE


def test_classifier_ties_take_the_first_maximal_index() -> None:
    tied = np.array([[2.0, 2.0, 1.0]])
    assert argmax_mismatches(tied, tied) == 0
    assert argmax_mismatches(tied, np.array([[2.0, 1.0, 1.0]])) == 0  # both pick index 0
    assert argmax_mismatches(tied, np.array([[1.0, 2.0, 1.0]])) == 1


def test_argmax_counts_nan_as_the_largest_value() -> None:
    shared_nan = np.array([[0.1, NAN, 0.9]])
    assert judge(shared_nan, shared_nan, TOLERANCE, classifier=True).verdict is Verdict.AGREE
    assert argmax_mismatches(shared_nan, np.array([[0.1, 0.2, 0.9]])) == 1


def test_argmax_of_a_0d_output_is_not_judged() -> None:
    judged = judge(np.array(1.0), np.array(1.0), TOLERANCE, classifier=True)
    assert judged.argmax_agree is None and judged.verdict is Verdict.AGREE


def test_overall_verdict_inconclusive_first() -> None:
    agree = judge([1.0], [1.0], TOLERANCE, classifier=False)
    disagree = judge([2.0], [1.0], TOLERANCE, classifier=False)
    inconclusive = judge([2.0], [INF], TOLERANCE, classifier=False)
    assert overall([agree, agree]) is Verdict.AGREE
    assert overall([agree, disagree]) is Verdict.DISAGREE
    assert overall([disagree, inconclusive, agree]) is Verdict.INCONCLUSIVE
    assert "index (0,)" in inconclusive.describe() and "no finite reference" in inconclusive.describe()


def test_default_tolerances_by_dtype() -> None:
    assert Tolerance.for_dtype("float32") == Tolerance(atol=1e-6, rtol=1e-5)
    assert Tolerance.for_dtype("torch.float16") == Tolerance(atol=1e-3, rtol=1e-2)
    assert Tolerance.for_dtype("float64").to_json() == {"atol": 1e-12, "rtol": 1e-10}
    with pytest.raises(ValueError, match="no default tolerance for dtype 'int8'"):
        Tolerance.for_dtype("int8")


def element_error(a: float, b: float) -> float:
    """The rule for one position, written out independently."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return INF
    return abs(a - b)


values = st.one_of(st.floats(-1e3, 1e3, width=32), st.sampled_from([NAN, INF, -INF]))


@st.composite
def pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 4)))
    reference = draw(arrays(np.float32, shape, elements=values))
    candidate = np.where(draw(arrays(np.bool_, shape)), draw(arrays(np.float32, shape, elements=values)), reference)
    return candidate, reference


@settings(max_examples=400, derandomize=True, deadline=None)
@given(pairs())
def test_rule_matches_an_element_by_element_reference(pair: tuple[np.ndarray, np.ndarray]) -> None:
    candidate, reference = pair
    a, b = candidate.astype(np.float64).ravel().tolist(), reference.astype(np.float64).ravel().tolist()
    errors = [element_error(x, y) for x, y in zip(a, b, strict=True)]
    finite = [abs(y) for y in b if math.isfinite(y)]
    scale = max(finite, default=0.0)
    unjudged = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if element_error(x, y) and not math.isfinite(y)]
    found = discrepancy(candidate, reference)
    assert found.max_abs == max(errors) and found.reference_scale == scale
    assert found.where == np.unravel_index(int(np.argmax(errors)), candidate.shape)
    expected_unjudged = np.unravel_index(unjudged[0], candidate.shape) if unjudged else None
    assert found.unjudged == expected_unjudged
    judged = judge(candidate, reference, TOLERANCE, classifier=False)
    if unjudged:
        assert judged.verdict is Verdict.INCONCLUSIVE
    else:
        within = max(errors) <= TOLERANCE.atol + TOLERANCE.rtol * scale
        assert judged.verdict is (Verdict.AGREE if within else Verdict.DISAGREE)
