"""One comparison helper with explicit, dtype-aware tolerances.

Two outputs a (candidate) and b (reference) agree when

    max |a − b|  ≤  atol + rtol · max |b|

i.e. the error is judged relative to the scale of the reference output, not element by element (an
element-wise relative error is meaningless for outputs near zero). `Discrepancy.max_rel` is
max|a − b| / max|b|. The service implements the same rule (service/equivalence.py); the rule is part of
the repository contract (docs/repository-format.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

# rtol by dtype: a few ulps of float32 accumulated over a deep network, looser for half precision.
DEFAULT_RTOL: dict[str, float] = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}
DEFAULT_ATOL: dict[str, float] = {"float64": 1e-12, "float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}


@dataclass(frozen=True)
class Tolerance:
    """Agreement rule max|a − b| ≤ atol + rtol · max|b|."""

    atol: float
    rtol: float

    @classmethod
    def for_dtype(cls, dtype: str) -> Tolerance:
        """The default tolerance for a dtype name such as 'float32' or 'torch.float16'."""
        name = dtype.removeprefix("torch.")
        if name not in DEFAULT_RTOL:
            raise ValueError(f"no default tolerance for dtype {dtype!r}; known: {sorted(DEFAULT_RTOL)}")
        return cls(atol=DEFAULT_ATOL[name], rtol=DEFAULT_RTOL[name])

    def to_json(self) -> dict[str, float]:
        return {"atol": self.atol, "rtol": self.rtol}


@dataclass(frozen=True)
class Discrepancy:
    """How far a candidate is from a reference: max abs error, its index, and error relative to max|b|."""

    max_abs: float
    max_rel: float
    reference_scale: float
    where: tuple[int, ...]

    def within(self, tolerance: Tolerance) -> bool:
        return self.max_abs <= tolerance.atol + tolerance.rtol * self.reference_scale

    def describe(self) -> str:
        return (
            f"max |Δ| = {self.max_abs:.3e} at index {self.where} "
            f"({self.max_rel:.3e} of max |reference| = {self.reference_scale:.3e})"
        )


def discrepancy(candidate: ArrayLike, reference: ArrayLike) -> Discrepancy:
    """Compare in float64. NaN or Inf anywhere in the candidate (not the reference) counts as infinite error."""
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: candidate {a.shape} vs reference {b.shape}")
    if a.size == 0:
        return Discrepancy(0.0, 0.0, 0.0, ())
    diff = np.abs(a - b)
    diff = np.where(np.isnan(diff) & ~(np.isnan(a) & np.isnan(b)), np.inf, diff)
    diff = np.nan_to_num(diff, nan=0.0, posinf=np.inf)
    flat_index = int(np.argmax(diff))
    where = tuple(int(i) for i in np.unravel_index(flat_index, a.shape))
    max_abs = float(diff.reshape(-1)[flat_index])
    finite_b = b[np.isfinite(b)]
    scale = float(np.max(np.abs(finite_b))) if finite_b.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return Discrepancy(max_abs=max_abs, max_rel=max_rel, reference_scale=scale, where=where)
