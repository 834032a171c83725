"""Moving weights between torch tensors (any dtype) and the float64 numpy arrays of folding/arithmetic.py."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

F64 = NDArray[np.float64]


def as_f64(tensor: Tensor) -> F64:
    """The tensor's values in float64 on the CPU (exact for fp16/bf16/fp32, which float64 contains)."""
    return tensor.detach().to("cpu", torch.float64).numpy()


def optional_f64(tensor: Tensor | None) -> F64 | None:
    """as_f64, with None (an absent bias, a non-affine BN) kept as None."""
    return None if tensor is None else as_f64(tensor)


def rounded_tensor(values: F64, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Round float64 values once, to nearest-even, to `dtype` and place them on `device`.

    torch converts float64 → float16/bfloat16 through float32, rounding twice (1 + 2⁻¹¹ + 2⁻⁴⁰ becomes 1.0
    instead of 1 + 2⁻¹⁰). Rounding to float32 *to odd* first makes the second rounding the correct one,
    because float32 keeps more than two extra bits beyond a half-precision mantissa.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.from_numpy(_round_to_odd_float32(values)).to(device=device, dtype=dtype)
    return torch.from_numpy(values).to(device=device, dtype=dtype)


def _round_to_odd_float32(values: F64) -> NDArray[np.float32]:
    """float64 → float32 truncated toward zero, with the last mantissa bit set when the result is inexact."""
    with np.errstate(over="ignore"):
        nearest = values.astype(np.float32)
    overshoot = np.abs(nearest.astype(np.float64)) > np.abs(values)
    truncated = np.where(overshoot, np.nextafter(nearest, np.float32(0)), nearest).astype(np.float32)
    inexact = (truncated.astype(np.float64) != values) & np.isfinite(truncated)
    bits = truncated.view(np.uint32)
    return np.where(inexact, bits | np.uint32(1), bits).astype(np.uint32).view(np.float32)
