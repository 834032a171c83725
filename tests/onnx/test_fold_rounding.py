"""fold_onnx rounds fused bfloat16/float16 tensors once: float64 → bfloat16 through float32
(ml_dtypes' astype) rounds twice and can land one bfloat16 ulp off.

The reference rounding is independent of numpy's and ml_dtypes' casts: frexp gives the significand, which
is rounded to nearest-even at the target precision.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from onnx import helper, numpy_helper

from bnfold.folding.onnx_fold import fold_onnx
from bnfold.folding.report import Action
from bnfold.folding.rounding import round_once

EPSILON = 0.5  # exact in float32, so the BN's ε is the same number on every side
BF16 = np.dtype(ml_dtypes.bfloat16)


def nearest_even(values: NDArray[np.float64], significant_bits: int) -> NDArray[np.float64]:
    """float64 rounded to `significant_bits` significant bits, nearest-even (normal range only)."""
    mantissa, exponent = np.frexp(values)  # values = mantissa · 2^exponent, 0.5 ≤ |mantissa| < 1
    return np.ldexp(np.round(mantissa * 2.0**significant_bits) / 2.0**significant_bits, exponent)


def double_rounding_scale() -> tuple[np.float32, float]:
    """A float32 running variance whose BN scale s = 1/√(σ² + ε) lies just above the bfloat16 tie
    1 + 2⁻⁸, within half a float32 ulp: through float32 it rounds to the tie and then to even (1.0);
    rounded once it is 1 + 2⁻⁷. Returns (σ², s in float64)."""
    tie = 1 + 2.0**-8
    var = np.float32(1 / tie**2 - EPSILON)
    for _ in range(4096):
        scale = 1 / np.sqrt(np.float64(var) + EPSILON)
        if tie < scale < tie + 2.0**-25:
            return var, float(scale)
        var = np.nextafter(var, np.float32(0))
    raise AssertionError("no variance gives a double-rounding scale")


def gemm_then_batchnorm(var: np.float32) -> onnx.ModelProto:
    """x (N, 1) bf16 → Gemm(B = [[1]], transB) → BN(γ=1, β=0, μ=0, σ²=var, ε=0.5; float32 statistics)."""
    initializers = [
        numpy_helper.from_array(np.ones((1, 1), BF16), "w"),
        *(numpy_helper.from_array(np.array([v], np.float32), n) for n, v in (("g", 1), ("b", 0), ("m", 0))),
        numpy_helper.from_array(np.array([var], np.float32), "v"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["z"], name="gemm", transB=1),
        helper.make_node("BatchNormalization", ["z", "g", "b", "m", "v"], ["y"], name="bn", epsilon=EPSILON),
    ]
    bf16 = onnx.TensorProto.BFLOAT16
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", bf16, ["N", 1])],
        [helper.make_tensor_value_info("y", bf16, ["N", 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def as_f64(model: onnx.ModelProto, name: str) -> NDArray[np.float64]:
    tensor = next(init for init in model.graph.initializer if init.name == name)
    return numpy_helper.to_array(tensor).astype(np.float64)


def test_the_scale_is_a_double_rounding_case() -> None:
    """The premise: ml_dtypes' cast rounds this value twice and gets 1.0; once-rounded it is 1 + 2⁻⁷."""
    _, scale = double_rounding_scale()
    assert np.array([scale]).astype(BF16).astype(np.float64)[0] == 1.0
    assert nearest_even(np.array([scale]), 8)[0] == 1 + 2.0**-7


def test_gemm_weight_fused_with_a_bfloat16_batchnorm_is_rounded_once() -> None:
    var, scale = double_rounding_scale()
    result = fold_onnx(gemm_then_batchnorm(var))
    assert result.report["bn"].action is Action.FOLDED_INTO_PREVIOUS
    gemm = result.model.graph.node[0]
    assert [node.op_type for node in result.model.graph.node] == ["Gemm"]
    assert as_f64(result.model, gemm.input[1])[0, 0] == 1 + 2.0**-7 == nearest_even(np.array([scale]), 8)[0]


def test_lowered_bfloat16_batchnorm_scale_is_rounded_once() -> None:
    """A BN on a graph input has no neighbour: it is lowered to Mul + Add with a bfloat16 scale."""
    var, scale = double_rounding_scale()
    model = gemm_then_batchnorm(var)
    model.graph.node[1].input[0] = "x"
    del model.graph.node[0]
    del model.graph.initializer[0]
    result = fold_onnx(model)
    assert result.report["bn"].action is Action.LOWERED
    mul = next(node for node in result.model.graph.node if node.op_type == "Mul")
    scale_tensor = next(init for init in result.model.graph.initializer if init.name == mul.input[1])
    assert scale_tensor.data_type == onnx.TensorProto.BFLOAT16
    assert as_f64(result.model, mul.input[1]).ravel()[0] == 1 + 2.0**-7 == nearest_even(np.array([scale]), 8)[0]


@pytest.mark.parametrize(("dtype", "bits"), [(BF16, 8), (np.dtype(np.float16), 11), (np.dtype(np.float32), 24)])
def test_round_once_matches_nearest_even_on_random_values(dtype: np.dtype[np.generic], bits: int) -> None:
    """Random significands with bits far beyond float32, plus exact ties and values one float64 ulp
    either side of a tie (where rounding twice goes wrong)."""
    rng = np.random.default_rng(7)
    signs = np.where(rng.random(20_000) < 0.5, -1.0, 1.0)
    values = signs * rng.uniform(1, 2, 20_000) * 2.0 ** rng.integers(-6, 6, 20_000)  # normal in float16 too
    ties = nearest_even(values, bits) + np.ldexp(1.0, np.frexp(values)[1] - bits - 1)
    probes = np.concatenate([values, ties, np.nextafter(ties, np.inf), np.nextafter(ties, -np.inf)])
    rounded = round_once(probes, dtype)
    assert rounded.dtype == dtype
    assert np.array_equal(rounded.astype(np.float64), nearest_even(probes, bits))
