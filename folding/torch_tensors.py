"""Moving weights between torch tensors (any dtype) and the float64 numpy arrays of folding/arithmetic.py."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from bnfold.folding.rounding import round_to_odd_float32

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
    because float32 keeps more than two extra bits beyond a half-precision mantissa (folding/rounding.py).
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.from_numpy(round_to_odd_float32(values)).to(device=device, dtype=dtype)
    return torch.from_numpy(values).to(device=device, dtype=dtype)
