"""The comparison rule of the folding engine: bnfold.contract.agreement's, re-exported here.

Two outputs a (candidate) and b (reference) agree when

    max |a − b|  ≤  atol + rtol · max |b|

compared in float64, with one non-finite policy: identical positions (equal infinities, NaN against NaN)
contribute 0, any other NaN/Inf is an infinite error (bnfold.contract.agreement states the whole rule).
"""

from __future__ import annotations

from bnfold.contract.agreement import DEFAULT_ATOL, DEFAULT_RTOL, Discrepancy, Tolerance, discrepancy

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "Discrepancy", "Tolerance", "discrepancy"]
