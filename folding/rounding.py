"""Round float64 results once, to nearest-even, to a narrower float dtype (pure numpy; both engines use it).

Converting float64 → bfloat16 (ml_dtypes, torch) or float64 → float16 (torch) goes through float32 and
rounds twice: 1 + 2⁻⁸ + 2⁻⁴⁰ becomes 1.0 in bfloat16 instead of 1 + 2⁻⁷. Rounding to float32 *to odd*
first (truncate toward zero, then set the last mantissa bit when anything was cut off) makes the second
rounding the correct one, because float32 keeps more than two extra bits beyond the narrower mantissa
and the sticky odd bit records whether the discarded part was exactly zero.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike, NDArray

F64 = NDArray[np.float64]


def round_to_odd_float32(values: F64) -> NDArray[np.float32]:
    """float64 → float32 truncated toward zero, with the last mantissa bit set when the result is inexact."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        nearest = values.astype(np.float32)
    overshoot = np.abs(nearest.astype(np.float64)) > np.abs(values)
    truncated = np.where(overshoot, np.nextafter(nearest, np.float32(0)), nearest).astype(np.float32)
    inexact = (truncated.astype(np.float64) != values) & np.isfinite(truncated)
    bits = truncated.view(np.uint32)
    return np.where(inexact, bits | np.uint32(1), bits).astype(np.uint32).view(np.float32)


def round_once(values: F64, dtype: DTypeLike) -> NDArray[np.generic]:
    """`values` rounded once, to nearest-even, to the floating dtype `dtype` (numpy or ml_dtypes).

    Dtypes narrower than float32 (float16, bfloat16, float8…) go through round_to_odd_float32; float32 and
    float64 are converted directly (numpy rounds float64 → float32 correctly).
    """
    target = np.dtype(dtype)
    values = np.asarray(values, dtype=np.float64)
    if target.itemsize < 4:
        return round_to_odd_float32(values).astype(target)
    return values.astype(target)
