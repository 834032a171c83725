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
float64 and rounded once to the parameter dtype (fp16/bf16 arithmetic mis-rounds): by the caller, or, when
the caller passes `dtype`, here (folding/rounding.py).

**Blocks.** Each new weight is computed over the rows of the array given (axis 0: the output channels of the
producer, or of the consumer), and every row of W' (and every b'_o of a fold into the next layer) depends on
that row alone and its index. So the rows are taken BLOCK_BYTES of float64 at a time (whole groups of rows for
grouped and transposed convolutions): each block is converted to float64, transformed and, with `dtype`,
rounded into the result. A weight of one block (every weight below 64 MiB of float64) is computed exactly as
the whole-array expression; a larger one gets the same element-wise numbers with one block of float64 working
memory instead of two float64 copies of the whole weight (a 2 GB float32 weight would need 8 GB more). The
result keeps the memory layout of the array given, so the transpose of a transposed view is contiguous.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from bnfold.folding.errors import FoldingError
from bnfold.folding.rounding import round_once

F64 = NDArray[np.float64]
BLOCK_BYTES = 1 << 26  # float64 working memory of one block of rows


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


def scale_output_channels(
    weight: NDArray[np.floating],
    scale: F64,
    *,
    transposed: bool = False,
    groups: int = 1,
    dtype: DTypeLike | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> NDArray[Any]:
    """W' = W · s along the output-channel axis of a producer's weight, computed in float64 and returned in
    float64, or rounded once to `dtype`.

    - Conv / Linear / Gemm with transB=1: weight is [C_out, …]; axis 0.
    - ConvTranspose: weight is [C_in, C_out/groups, k…]; output channel o = g·(C_out/groups) + j sits on
      axis 1 within group g, so the weight is viewed as [groups, C_in/groups, C_out/groups, k…].
    """
    shape = np.shape(weight)
    if not transposed:
        if shape[0] != scale.shape[0]:
            raise FoldingError(f"weight has {shape[0]} output channels, BatchNorm has {scale.shape[0]}")
        tail = (1,) * (len(shape) - 1)
        new, _ = by_rows(weight, lambda block, rows: (block * scale[rows].reshape((-1, *tail)), None), dtype,
                         block_bytes=block_bytes)  # fmt: skip
        return new
    c_in, c_out_per_group = shape[0], shape[1]
    if c_in % groups or c_out_per_group * groups != scale.shape[0]:
        raise FoldingError(
            f"transposed weight {tuple(shape)} with groups={groups} does not produce {scale.shape[0]} channels"
        )
    kernel = shape[2:]
    per_group = c_in // groups
    scales = scale.reshape((groups, 1, c_out_per_group) + (1,) * len(kernel))  # per group: (1, Cout/g, 1…)

    def scaled(block: F64, rows: slice) -> tuple[F64, None]:
        first, last = rows.start // per_group, rows.stop // per_group
        grouped = block.reshape((last - first, per_group, c_out_per_group, *kernel))  # (g, Cin/g, Cout/g, k…)
        return (grouped * scales[first:last]).reshape(block.shape), None

    new, _ = by_rows(weight, scaled, dtype, rows_per_group=per_group, block_bytes=block_bytes)
    return new


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
    dtype: DTypeLike | None = None,
) -> tuple[NDArray[Any], F64]:
    """Fold y = s·z + t into the producer z = W ⋆ x + b: returns (W · s, s · b + t), W · s in float64 or
    rounded to `dtype`, the bias in float64."""
    new_weight = scale_output_channels(weight, affine.scale, transposed=transposed, groups=groups, dtype=dtype)
    return new_weight, shift_bias(bias, affine)


def fold_into_next(
    weight: NDArray[np.floating],
    bias: NDArray[np.floating] | None,
    affine: ScaleShift,
    *,
    groups: int = 1,
    dtype: DTypeLike | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> tuple[NDArray[Any], F64]:
    """Fold x̂ = s·x + t into the consumer z = W ⋆ x̂ + b whose weight is [C_out, C_in/groups, k…].

    Returns W'[o, c, k] = W[o, c, k]·s_c (float64, or rounded to `dtype`) and b'_o = b_o + Σ_{c,k} W[o, c, k]·t_c
    (float64), where c runs over the input channels of o's group. Only exact when the consumer reads no zero
    padding.
    """
    shape = np.shape(weight)
    c_out, c_in_per_group = shape[0], shape[1]
    if c_out % groups or c_in_per_group * groups != affine.scale.shape[0]:
        raise FoldingError(
            f"consumer weight {tuple(shape)} with groups={groups} does not read {affine.scale.shape[0]} channels"
        )
    kernel = shape[2:]
    per_group = c_out // groups
    channel_shape = (groups, 1, c_in_per_group) + (1,) * len(kernel)
    scales, shifts = affine.scale.reshape(channel_shape), affine.shift.reshape(channel_shape)

    def folded(block: F64, rows: slice) -> tuple[F64, F64]:
        first, last = rows.start // per_group, rows.stop // per_group
        grouped = block.reshape((last - first, per_group, c_in_per_group, *kernel))  # (g, Cout/g, Cin/g, k…)
        gain = (grouped * shifts[first:last]).reshape(block.shape[0], -1).sum(axis=1)
        return (grouped * scales[first:last]).reshape(block.shape), gain

    new_weight, bias_gain = by_rows(weight, folded, dtype, rows_per_group=per_group, block_bytes=block_bytes)
    base = np.zeros(c_out) if bias is None else np.asarray(bias, dtype=np.float64)
    return new_weight, base + (np.zeros(c_out) if bias_gain is None else bias_gain)


RowRule = Callable[[F64, slice], tuple[F64, F64 | None]]


def by_rows(
    weight: NDArray[np.generic],
    rule: RowRule,
    dtype: DTypeLike | None,
    *,
    rows_per_group: int = 1,
    block_bytes: int = BLOCK_BYTES,
) -> tuple[NDArray[Any], F64 | None]:
    """(W', per-row values) with W'[rows] = rule(float64(W[rows]), rows)[0], rounded once to `dtype` (float64
    when None), for blocks of whole groups of `rows_per_group` rows of at most `block_bytes` of float64 (at
    least one group); the rule's per-row values (or None) are concatenated. W' has the layout of `weight`."""
    rows = int(np.shape(weight)[0])
    row_bytes = 8 * math.prod(np.shape(weight)[1:])
    group_bytes = max(1, row_bytes * rows_per_group)
    step = max(1, block_bytes // group_bytes) * rows_per_group
    result = np.empty_like(weight, dtype=np.float64 if dtype is None else dtype)
    extras: list[F64] = []
    for start in range(0, rows, step):
        block = slice(start, min(start + step, rows))
        new, extra = rule(np.asarray(weight[block], dtype=np.float64), block)
        result[block] = new if dtype is None else round_once(new, dtype)
        if extra is not None:
            extras.append(extra)
    return result, (np.concatenate(extras) if extras else None)
