"""The referee's rule on hand-made outputs: within atol + 4·r + rtol·scale is rounding, beyond is a defect;
an arg-max flip is rounding only when it is a tie within that bound."""

from __future__ import annotations

import math

import numpy as np

from bnfold.contract.agreement import Tolerance
from bnfold.service.referee import ROUNDING_FACTOR, rule

TIGHT = Tolerance(atol=1e-6, rtol=0.0)


def test_the_widened_bound() -> None:
    unfolded = {"y": np.array([[0.5, -2.0]])}
    assert ROUNDING_FACTOR == 4.0
    within = rule({"y": unfolded["y"] + 4.0e-5}, unfolded, {"y": 1e-5}, TIGHT, classifier=False)  # ≤ 4.1e-5
    assert within.rounding and within.reason == "explained by float32 rounding ('y' r = 1.000e-05, factor 4)"
    beyond = rule({"y": unfolded["y"] + 4.2e-5}, unfolded, {"y": 1e-5}, TIGHT, classifier=False)
    assert not beyond.rounding
    assert beyond.reason == (
        "output 'y': max |Δ| = 4.200e-05 at index (0, 1) (2.100e-05 of max |reference| = 2.000e+00), "
        "bound 4.100e-05 (rounding scale r = 1.000e-05, bound 4·r + tol)"
    )  # float64: |−2 + 4.2e-5 − (−2)| rounds a little above |0.5 + 4.2e-5 − 0.5|, so index (0, 1)
    unknown = rule(unfolded, unfolded, {"y": math.inf}, TIGHT, classifier=False)
    assert not unknown.rounding and unknown.reason == "output 'y': the rounding scale is not finite, no referee"


def test_arg_max_flips() -> None:
    loose = Tolerance(atol=1e-2, rtol=0.0)
    unfolded = {"logits": np.array([[1.0, 1.001, 0.0]])}
    tie = rule({"logits": np.array([[1.001, 1.0, 0.0]])}, unfolded, {"logits": 0.0}, loose, classifier=True)
    assert tie.rounding  # the two logits differ by 1e-3 ≤ 1e-2 in unfolded
    # every value within 1e-2 of unfolded, yet the logits folded and unfolded picked differ by 1.5e-2 in unfolded
    far = {"logits": np.array([[1.0, 1.015, 0.0]])}
    flipped = rule({"logits": np.array([[1.009, 1.006, 0.0]])}, far, {"logits": 0.0}, loose, classifier=True)
    assert not flipped.rounding
    assert flipped.reason == "output 'logits': arg-max differs beyond a tie within 1.000e-02"
