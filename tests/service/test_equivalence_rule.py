"""The service's equivalence check reports the contract's rule (bnfold.contract.agreement) on finite references."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bnfold.contract.agreement import Tolerance, discrepancy
from bnfold.service.equivalence import compare

ATOL, RTOL = 1e-6, 1e-5
finite_values = st.floats(-1e3, 1e3, allow_nan=False, width=32)
any_values = st.one_of(finite_values, st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def candidate_and_reference(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 5)))
    reference = draw(arrays(np.float32, shape, elements=finite_values))
    noise = draw(arrays(np.float32, shape, elements=st.floats(-0.0009765625, 0.0009765625, width=32)))
    candidate = reference + noise
    if draw(st.booleans()):  # a few non-finite candidate values
        spoiled = draw(arrays(np.float32, shape, elements=any_values))
        mask = draw(arrays(np.bool_, shape))
        candidate = np.where(mask, spoiled, candidate)
    return candidate, reference


@settings(max_examples=300, derandomize=True, deadline=None)
@given(candidate_and_reference())
def test_service_rule_matches_folding_rule(pair: tuple[np.ndarray, np.ndarray]) -> None:
    candidate, reference = pair
    expected = discrepancy(candidate, reference)
    result = compare({"y": candidate}, {"y": reference}, ATOL, RTOL, classifier=False)
    assert not result.inconclusive
    assert result.max_abs == expected.max_abs
    assert result.max_rel == expected.max_rel
    assert result.within_tolerance is expected.within(Tolerance(ATOL, RTOL))
