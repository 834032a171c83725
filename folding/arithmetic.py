"""The pure arithmetic of BatchNorm folding, shared by the PyTorch and the ONNX side.

At inference a BatchNorm over channel c is the affine map

    y_c = γ_c · (x_c − μ_c) / √(σ²_c + ε) + β_c  =  s_c · x_c + t_c,
    s_c = γ_c / √(σ²_c + ε),   t_c = β_c − μ_c · s_c.

*Folding into the previous layer* (Conv, ConvTranspose, Linear, Gemm) whose output channel c is
z_c = Σ W[c, …] · x + b_c gives  y_c = Σ (s_c · W[c, …]) · x + (s_c · b_c + t_c):

    W' = W · s   along the producer's output-channel axis,
    b' = s · b + t   (b = 0 when the producer has no bias).

*Folding into the next layer* (Linear, or a Conv that reads no zero padding) whose input is the BN's
output: z_o = Σ_c Σ_k W[o, c, k] · (s_c x_c + t_c) + b_o gives

    W'[o, c, k] = W[o, c, k] · s_c,    b'_o = b_o + Σ_c Σ_k W[o, c, k] · t_c.

No division by s ever happens, so γ = 0 is legal and yields finite tensors. Everything is computed in
float64 and rounded once by the caller to the parameter dtype (fp16/bf16 arithmetic mis-rounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bnfold.folding.errors import FoldingError

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class ScaleShift:
    """The per-channel affine map y = scale · x + shift that an inference-time BN computes."""

    scale: F64  # (C,)
    shift: F64  # (C,)


def batchnorm_scale_shift(
    gamma: NDArray[np.floating] | None,
    beta: NDArray[np.floating] | None,
    mean: NDArray[np.floating],
    var: NDArray[np.floating],
    eps: float,
) -> ScaleShift:
    """Return s = γ/√(σ²+ε) and t = β − μ·s in float64; γ = 1 and β = 0 when the BN is not affine.

    Raises FoldingError when σ² + ε is not strictly positive or any statistic is not finite,
    because then the BN itself computes NaN/Inf and no fused weight could reproduce it faithfully.
    """
    mean64 = np.asarray(mean, dtype=np.float64)
    var64 = np.asarray(var, dtype=np.float64)
    channels = mean64.shape
    gamma64 = np.ones(channels) if gamma is None else np.asarray(gamma, dtype=np.float64)
    beta64 = np.zeros(channels) if beta is None else np.asarray(beta, dtype=np.float64)
    for label, values in (("gamma", gamma64), ("beta", beta64), ("mean", mean64), ("var", var64)):
        if values.shape != channels:
            raise FoldingError(f"BatchNorm {label} has shape {values.shape}, expected {channels}")
        if not np.all(np.isfinite(values)):
            raise FoldingError(f"BatchNorm {label} holds NaN or Inf; re-estimate the statistics first")
    denominator = var64 + float(eps)
    if np.any(denominator <= 0.0):
        raise FoldingError(
            "BatchNorm running_var + eps is not positive for some channel; the BN itself would divide by "
            "zero. Re-estimate the statistics (bnfold recalibrate) or raise eps."
        )
    scale = gamma64 / np.sqrt(denominator)
    return ScaleShift(scale=scale, shift=beta64 - mean64 * scale)


def compose(first: ScaleShift, second: ScaleShift) -> ScaleShift:
    """Compose two affine maps applied in order: second(first(x)) = s2·(s1·x + t1) + t2."""
    return ScaleShift(scale=second.scale * first.scale, shift=second.scale * first.shift + second.shift)


def scale_output_channels(weight: F64, scale: F64, *, transposed: bool = False, groups: int = 1) -> F64:
    """W' = W · s along the output-channel axis of a producer's weight, in float64.

    - Conv / Linear / Gemm with transB=1: weight is [C_out, …]; axis 0.
    - ConvTranspose: weight is [C_in, C_out/groups, k…]; output channel o = g·(C_out/groups) + j sits on
      axis 1 within group g, so the weight is viewed as [groups, C_in/groups, C_out/groups, k…].
    """
    weight = np.asarray(weight, dtype=np.float64)
    if not transposed:
        if weight.shape[0] != scale.shape[0]:
            raise FoldingError(f"weight has {weight.shape[0]} output channels, BatchNorm has {scale.shape[0]}")
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    c_in, c_out_per_group = weight.shape[0], weight.shape[1]
    if c_in % groups or c_out_per_group * groups != scale.shape[0]:
        raise FoldingError(
            f"transposed weight {weight.shape} with groups={groups} does not produce {scale.shape[0]} channels"
        )
    kernel = weight.shape[2:]
    grouped = weight.reshape((groups, c_in // groups, c_out_per_group, *kernel))  # (g, Cin/g, Cout/g, k…)
    per_group_scale = scale.reshape((groups, 1, c_out_per_group) + (1,) * len(kernel))
    return (grouped * per_group_scale).reshape(weight.shape)


def shift_bias(bias: NDArray[np.floating] | None, affine: ScaleShift) -> F64:
    """b' = s · b + t, with b = 0 when the producer has no bias."""
    if bias is None:
        return affine.shift.copy()
    return affine.scale * np.asarray(bias, dtype=np.float64) + affine.shift


def fold_into_previous(
    weight: NDArray[np.floating],
    bias: NDArray[np.floating] | None,
    affine: ScaleShift,
    *,
    transposed: bool = False,
    groups: int = 1,
) -> tuple[F64, F64]:
    """Fold y = s·z + t into the producer z = W ⋆ x + b: returns (W · s, s · b + t) in float64."""
    return (
        scale_output_channels(np.asarray(weight, np.float64), affine.scale, transposed=transposed, groups=groups),
        shift_bias(bias, affine),
    )


def fold_into_next(
    weight: NDArray[np.floating],
    bias: NDArray[np.floating] | None,
    affine: ScaleShift,
    *,
    groups: int = 1,
) -> tuple[F64, F64]:
    """Fold x̂ = s·x + t into the consumer z = W ⋆ x̂ + b whose weight is [C_out, C_in/groups, k…].

    Returns W'[o, c, k] = W[o, c, k]·s_c and b'_o = b_o + Σ_{c,k} W[o, c, k]·t_c, where c runs over
    the input channels of o's group. Only exact when the consumer reads no zero padding.
    """
    w = np.asarray(weight, dtype=np.float64)
    c_out, c_in_per_group = w.shape[0], w.shape[1]
    if c_out % groups or c_in_per_group * groups != affine.scale.shape[0]:
        raise FoldingError(
            f"consumer weight {w.shape} with groups={groups} does not read {affine.scale.shape[0]} channels"
        )
    kernel = w.shape[2:]
    grouped = w.reshape((groups, c_out // groups, c_in_per_group, *kernel))  # (g, Cout/g, Cin/g, k…)
    scale = affine.scale.reshape((groups, 1, c_in_per_group) + (1,) * len(kernel))
    shift = affine.shift.reshape((groups, 1, c_in_per_group) + (1,) * len(kernel))
    new_weight = (grouped * scale).reshape(w.shape)
    bias_gain = (grouped * shift).reshape(c_out, -1).sum(axis=1)
    base = np.zeros(c_out) if bias is None else np.asarray(bias, dtype=np.float64)
    return new_weight, base + bias_gain
