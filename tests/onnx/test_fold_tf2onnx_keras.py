"""Graph shapes that tf2onnx writes for Keras models, built here with onnx.helper (no TensorFlow).

The shapes were taken from real conversions (tf2onnx.convert.from_keras of Keras models with random BN
statistics, bench/tf2onnx_check.py): Keras 3 writes inference BatchNormalization as x·s + t, TensorFlow's
constant folding leaves Mul(s) → Add(t) with s, t constants, already NCHW (1, C, 1, 1) next to Conv and
ConvTranspose and (C,) next to MatMul; a Conv2D's own BN is already fused into the Conv by the converter.

* An MLP with a BN at the input and a Dense-BN: the input map folds forward into the MatMul that the
  Dense-BN map has already been folded into, so the MatMul's bias Add absorbs Wᵀ·t (no second Add).
* Flatten at opset 13: Reshape by a shape computed from Shape(x). ONNX shape inference of Reshape-13 gives
  its output no rank (Reshape-14 does), so the ranks after it come from the shape input's length.

Every test checks the folded graph against the reference evaluator (tests/onnx/graphs.py) and the
unfolded graph in onnxruntime, counts the maps folded, and reads each fold's measured error.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from bnfold.folding.compare import discrepancy
from bnfold.folding.onnx_fold import OnnxFoldResult
from bnfold.folding.onnx_shapes import infer_ranks
from bnfold.folding.report import Action
from tests.onnx.affine_graphs import scale_shift
from tests.onnx.graphs import FP32, GraphBuilder, actions, fold_and_check, ops
from tests.onnx.ort_helpers import run_ort


def _check_against_unfolded(model: onnx.ModelProto, result: OnnxFoldResult, g: GraphBuilder) -> None:
    """Folded vs unfolded, both in onnxruntime without graph optimisations; every entry measured."""
    feeds = g.feeds(batch=5)
    for got, want in zip(run_ort(result.model, feeds), run_ort(model, feeds), strict=True):
        gap = discrepancy(got, want)
        assert gap.within(FP32), gap.describe()
    assert all(entry.max_error is not None and entry.max_error < 1e-4 for entry in result.report)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keras_mlp_input_bn_and_dense_bn_both_fold_into_the_one_matmul(seed: int) -> None:
    """features → Mul/Add (input BN) → MatMul → Mul/Add (Dense-BN, the Dense bias folded into t) → Relu → MatMul."""
    g = GraphBuilder(seed=seed)
    xn = scale_shift(g, g.input("features", ["N", 20]), (20,), "xn")
    z = g.node("MatMul", [xn, g.weight("dense.w", (20, 32))], "z")
    hidden = g.node("Relu", [scale_shift(g, z, (32,), "zn")], "hidden")
    g.output(g.node("MatMul", [hidden, g.weight("logits.w", (32, 5))], "logits"), 2)
    model = g.model()
    result = fold_and_check(model, g.feeds(), batchnorms_left=0)
    assert actions(result) == {"mul_xn_scaled": Action.FOLDED_INTO_NEXT, "mul_zn_scaled": Action.FOLDED_INTO_PREVIOUS}
    assert {entry.target for entry in result.report} == {"matmul_z"}
    assert ops(result.model) == ["MatMul", "Add", "Relu", "MatMul"]
    assert result.report.summary() == "2/2 BatchNorm folded, 0 lowered, 0 kept (2 of the 2 are affine maps)"
    _check_against_unfolded(model, result, g)


@pytest.mark.parametrize("bias_shape", [(6,), (1, 6), ()])
def test_input_map_before_a_dense_with_its_bias_add_merges_into_that_bias(bias_shape: tuple[int, ...]) -> None:
    """Mul/Add → MatMul → Add(b): x̂·W + b = x·(diag(s)·W) + (Wᵀ·t + b), one Add left."""
    g = GraphBuilder(seed=3 + len(bias_shape))
    xn = scale_shift(g, g.input("x", ["N", 4]), (4,), "xn")
    z = g.node("MatMul", [xn, g.weight("w", (4, 6))], "z")
    g.output(g.node("Add", [g.weight("b", bias_shape), z], "y"), 2)
    model = g.model()
    result = fold_and_check(model, g.feeds(), batchnorms_left=0)
    assert actions(result) == {"mul_xn_scaled": Action.FOLDED_INTO_NEXT}
    assert ops(result.model) == ["MatMul", "Add"]
    _check_against_unfolded(model, result, g)


def test_two_maps_in_a_row_before_a_matmul_both_fold_forward() -> None:
    """Mul/Add → Mul/Add → MatMul: the second fold goes into the MatMul (and Add) the first one wrote."""
    g = GraphBuilder(seed=7)
    first = scale_shift(g, g.input("x", ["N", 5]), (5,), "first")
    second = scale_shift(g, first, (1, 5), "second")
    g.output(g.node("MatMul", [second, g.weight("w", (5, 3))], "y"), 2)
    model = g.model()
    result = fold_and_check(model, g.feeds(), batchnorms_left=0)
    assert actions(result) == {
        "mul_first_scaled": Action.FOLDED_INTO_NEXT,
        "mul_second_scaled": Action.FOLDED_INTO_NEXT,
    }
    assert ops(result.model) == ["MatMul", "Add"]
    _check_against_unfolded(model, result, g)


def _flatten(g: GraphBuilder, x: str, output: str) -> str:
    """Keras Flatten as tf2onnx writes it: Reshape(x, Concat(Slice(Shape(x), 0, 1), [-1]))."""
    shape = g.node("Shape", [x], f"{output}_shape")
    starts, ends = g.const(f"{output}.starts", np.array([0])), g.const(f"{output}.ends", np.array([1]))
    batch = g.node("Slice", [shape, starts, ends], f"{output}_batch")
    target = g.node("Concat", [batch, g.const(f"{output}.rest", np.array([-1]))], f"{output}_target", axis=0)
    return g.node("Reshape", [x, target], output)


def _flatten_cnn(opset: int, seed: int) -> tuple[GraphBuilder, onnx.ModelProto]:
    """Depthwise Conv → Mul/Add (1, C, 1, 1) → Relu → Transpose to NHWC → Flatten → MatMul → Mul/Add → MatMul."""
    g = GraphBuilder(seed=seed)
    z = g.node("Conv", [g.input("x", ["N", 4, 5, 5]), g.weight("dw", (4, 1, 3, 3))], "z", group=4, pads=[1] * 4)
    a = g.node("Relu", [scale_shift(g, z, (1, 4, 1, 1), "zn")], "a")
    flat = _flatten(g, g.node("Transpose", [a], "a_nhwc", perm=[0, 2, 3, 1]), "flat")
    dense = g.node("MatMul", [flat, g.weight("dense.w", (100, 8))], "dense")
    g.output(g.node("MatMul", [scale_shift(g, dense, (8,), "dn"), g.weight("logits.w", (8, 3))], "logits"), 2)
    return g, g.model(opset)


@pytest.mark.parametrize("opset", [13, 15])
def test_flatten_then_dense_bn_folds_at_opset_13_as_at_15(opset: int) -> None:
    g, model = _flatten_cnn(opset, seed=opset)
    result = fold_and_check(model, g.feeds(), batchnorms_left=0)
    assert actions(result) == {
        "mul_zn_scaled": Action.FOLDED_INTO_PREVIOUS,
        "mul_dn_scaled": Action.FOLDED_INTO_PREVIOUS,
    }
    assert [entry.target for entry in result.report] == ["conv_z", "matmul_dense"]
    assert "Mul" not in ops(result.model)
    assert ops(result.model).count("Add") == 1  # the MatMul's new bias
    _check_against_unfolded(model, result, g)


@pytest.mark.parametrize("opset", [13, 15])
def test_ranks_after_a_reshape_by_a_computed_shape(opset: int) -> None:
    _, model = _flatten_cnn(opset, seed=0)
    ranks, _ = infer_ranks(ir.serde.deserialize_model(model))
    assert [ranks.get(name) for name in ("a_nhwc", "flat_target", "flat", "dense", "dn", "logits")] == [
        4,
        1,
        2,
        2,
        2,
        2,
    ]
