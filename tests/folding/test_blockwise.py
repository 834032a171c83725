"""The fold arithmetic taken a block of rows at a time (folding/arithmetic.py `by_rows`) gives the numbers of the
whole-array formula, rounded once to the weight's dtype, for every layout the ONNX rules pass: Conv weights,
a Gemm's transposed B (a Fortran-ordered view), grouped ConvTranspose and grouped consumers.

Block sizes of a row or a few rows force many blocks on small weights; the memory a large weight saves is
measured in bench/large_model.py, never here. References are written independently: explicit loops over
channels and groups in float64, then one numpy rounding. BatchNorm statistics are random.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from bnfold.folding.arithmetic import ScaleShift, batchnorm_scale_shift, fold_into_next, scale_output_channels
from bnfold.folding.errors import FoldingError
from bnfold.folding.rounding import round_once

RNG = np.random.default_rng(20)
BLOCKS = (8, 8 * 27 * 3, 1 << 26)  # below one row (one row per block), three rows, the default (one block)


def random_affine(channels: int) -> ScaleShift:
    return batchnorm_scale_shift(
        RNG.uniform(0.5, 1.5, channels), RNG.normal(0, 0.5, channels), RNG.normal(0, 0.5, channels),
        RNG.uniform(0.3, 2.0, channels), eps=1e-5,
    )  # fmt: skip


def weight(*shape: int) -> NDArray[np.float32]:
    return RNG.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("block_bytes", BLOCKS)
def test_conv_weight_scaled_by_output_channel(block_bytes: int) -> None:
    w, affine = weight(16, 3, 3, 3), random_affine(16)
    expected = np.empty((16, 3, 3, 3))
    for channel in range(16):
        expected[channel] = w[channel].astype(np.float64) * affine.scale[channel]
    got = scale_output_channels(w, affine.scale, dtype=np.float32, block_bytes=block_bytes)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("block_bytes", BLOCKS)
def test_a_transposed_gemm_weight_keeps_its_layout(block_bytes: int) -> None:
    """Gemm with transB = 0: B is (K, N) and the rule scales B.T's rows; the result's transpose is B's layout."""
    b, affine = weight(27, 12), random_affine(12)
    got = scale_output_channels(b.T, affine.scale, dtype=np.float32, block_bytes=block_bytes)
    expected = np.array([[b[k, n] * affine.scale[n] for k in range(27)] for n in range(12)])
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    assert got.T.flags.c_contiguous  # the folded B needs no copy to be contiguous


@pytest.mark.parametrize("block_bytes", BLOCKS)
def test_grouped_conv_transpose_blocks_hold_whole_groups(block_bytes: int) -> None:
    groups, c_in, per_group_out = 2, 8, 3  # weight [C_in, C_out/groups, k, k]; C_out = 6
    w, affine = weight(c_in, per_group_out, 3, 3), random_affine(groups * per_group_out)
    expected = np.empty(w.shape)
    for row in range(c_in):
        group = row // (c_in // groups)
        for j in range(per_group_out):
            expected[row, j] = w[row, j].astype(np.float64) * affine.scale[group * per_group_out + j]
    got = scale_output_channels(w, affine.scale, transposed=True, groups=groups, dtype=np.float32,
                                block_bytes=block_bytes)  # fmt: skip
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_float16_is_rounded_once_per_block() -> None:
    w, affine = weight(6, 4, 3, 3).astype(np.float16), random_affine(6)
    whole = w.astype(np.float64) * affine.scale.reshape(6, 1, 1, 1)
    got = scale_output_channels(w, affine.scale, dtype=np.float16, block_bytes=8)
    np.testing.assert_array_equal(got, round_once(whole, np.float16))
    assert got.dtype == np.float16


def test_fold_into_a_grouped_consumer_block_by_block() -> None:
    groups, c_out, c_in_per_group = 2, 6, 4  # consumer weight [C_out, C_in/groups, k, k]; reads 8 channels
    w, affine = weight(c_out, c_in_per_group, 3, 3), random_affine(groups * c_in_per_group)
    bias = RNG.normal(size=c_out)
    expected_w, expected_b = np.empty(w.shape), bias.copy()
    for o in range(c_out):
        group = o // (c_out // groups)
        for c in range(c_in_per_group):
            channel = group * c_in_per_group + c
            expected_w[o, c] = w[o, c].astype(np.float64) * affine.scale[channel]
            expected_b[o] += float(np.sum(w[o, c].astype(np.float64))) * affine.shift[channel]
    results = [fold_into_next(w, bias, affine, groups=groups, dtype=np.float32, block_bytes=block) for block in BLOCKS]
    for new_weight, new_bias in results:
        np.testing.assert_array_equal(new_weight, expected_w.astype(np.float32))
        np.testing.assert_allclose(new_bias, expected_b, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(new_bias, results[-1][1])  # each row's sum is the same sum in any block


def test_without_a_dtype_the_result_stays_float64() -> None:
    """The PyTorch engine's use: float64 out, as before blocks existed."""
    w, affine = weight(5, 7), random_affine(5)
    got = scale_output_channels(w, affine.scale, block_bytes=8)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, w.astype(np.float64) * affine.scale[:, None])


def test_a_channel_mismatch_is_refused_before_any_block() -> None:
    with pytest.raises(FoldingError, match=r"^weight has 8 output channels, BatchNorm has 16$"):
        scale_output_channels(weight(8, 3), random_affine(16).scale, dtype=np.float32, block_bytes=8)
