"""fold_onnx folds every must-fold pattern of the ONNX engine (graphs built with onnx.helper, random BN
statistics)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from bnfold.folding.compare import Tolerance
from bnfold.folding.onnx_fold import fold_onnx
from bnfold.folding.report import Action
from tests.onnx.graphs import GraphBuilder, actions, fold_and_check, ops


@pytest.mark.parametrize("opset", [9, 14, 15])
@pytest.mark.parametrize(("groups", "bias"), [(1, True), (1, False), (2, True), (6, False)], ids=lambda v: str(v))
def test_conv_then_bn_folds_into_conv(opset: int, groups: int, bias: bool) -> None:
    g = GraphBuilder(seed=opset * 10 + groups)
    conv_inputs = [g.input("x", ["N", 6, 7, 7]), g.weight("w", (6, 6 // groups, 3, 3))]
    if bias:
        conv_inputs.append(g.weight("b", (6,)))
    g.node("Conv", conv_inputs, "z", group=groups, pads=[1, 1, 1, 1], strides=[2, 2])
    g.batchnorm("z", 6, "y", epsilon=1e-3)
    g.output("y", 4)
    result = fold_and_check(g.model(opset), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv"]
    entry = result.report["bn_y"]
    assert (entry.action, entry.target, entry.reason) == (Action.FOLDED_INTO_PREVIOUS, "conv_z", None)
    assert entry.max_error is not None and entry.max_error < 1e-5
    conv = result.model.graph.node[0]
    assert len(conv.input) == 3 and conv.output == ["y"]  # a bias was created when there was none


@pytest.mark.parametrize(
    ("c_in", "c_out", "groups"), [(4, 6, 1), (4, 4, 2), (6, 6, 3), (4, 8, 4)], ids=["plain", "g2_square", "g3", "g4"]
)
def test_conv_transpose_then_bn_scales_output_channels_within_groups(c_in: int, c_out: int, groups: int) -> None:
    """ConvTranspose weight is [C_in, C_out/groups, k…]; scaling axis 0 would pass when
    C_in == C_out and groups == 1 but corrupt grouped layers."""
    g = GraphBuilder(seed=c_in + c_out + groups)
    x = g.input("x", ["N", c_in, 5, 5])
    g.node("ConvTranspose", [x, g.weight("w", (c_in, c_out // groups, 3, 3))], "z", group=groups, strides=[2, 2])
    g.batchnorm("z", c_out, "y")
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["ConvTranspose"]
    assert result.report["bn_y"].target == "convtranspose_z"


@pytest.mark.parametrize(
    ("trans_a", "trans_b", "alpha", "beta", "c_shape"),
    [
        (0, 0, 1.0, 1.0, (5,)),
        (0, 1, 0.5, 2.0, (5,)),
        (1, 0, 1.5, 0.25, (1, 5)),
        (1, 1, 2.0, -1.0, ()),
        (0, 1, 1.0, 3.0, None),
        (0, 0, 0.75, 0.5, (4, 5)),
    ],
    ids=["plain", "transB_alpha_beta", "transA_row_bias", "both_scalar_bias", "no_bias", "full_bias"],
)
def test_gemm_then_bn_honours_trans_alpha_beta(
    trans_a: int, trans_b: int, alpha: float, beta: float, c_shape: tuple[int, ...] | None
) -> None:
    """transB picks B's output axis, β scales C, α scales A·B."""
    g = GraphBuilder(seed=trans_a * 2 + trans_b)
    a = g.input("a", [3, 4] if trans_a else [4, 3])  # A is (K, M) when transA = 1
    b = g.weight("b", (5, 3) if trans_b else (3, 5))
    inputs = [a, b] if c_shape is None else [a, b, g.weight("c", c_shape)]
    g.node("Gemm", inputs, "z", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    g.batchnorm("z", 5, "y")
    g.output("y", 2)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    gemm = result.model.graph.node[0]
    assert ops(result.model) == ["Gemm"]
    attributes = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    assert "beta" not in attributes and attributes["alpha"] == pytest.approx(alpha)


def test_matmul_with_constant_weight_then_bn_becomes_matmul_add() -> None:
    g = GraphBuilder(seed=3)
    g.node("MatMul", [g.input("x", ["N", 6]), g.weight("w", (6, 4))], "z")
    g.batchnorm("z", 4, "y")
    g.output("y", 2)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["MatMul", "Add"]
    assert result.report["bn_y"].action is Action.FOLDED_INTO_PREVIOUS
    assert [init.name for init in result.model.graph.initializer] == ["w", "w_bias"]


@pytest.mark.parametrize("bias_first", [False, True], ids=["matmul_plus_b", "b_plus_matmul"])
def test_matmul_add_then_bn_folds_into_both(bias_first: bool) -> None:
    g = GraphBuilder(seed=4)
    g.node("MatMul", [g.input("x", ["N", 6]), g.weight("w", (6, 4))], "z")
    g.node("Add", ["b", "z"] if bias_first else ["z", "b"], "zb")
    g.weight("b", (4,))
    g.batchnorm("zb", 4, "y")
    g.output("y", 2)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["MatMul", "Add"]
    assert result.report["bn_y"].target == "matmul_z"


@pytest.mark.parametrize(("groups", "stride"), [(1, 1), (2, 2), (4, 1)], ids=["plain", "g2_stride2", "depthwise"])
def test_bn_then_unpadded_conv_folds_into_next(groups: int, stride: int) -> None:
    """The next conv's weight is scaled on its input-channel axis, its bias gains Σ W·t."""
    g = GraphBuilder(seed=10 + groups)
    g.batchnorm(g.input("x", ["N", 4, 6, 6]), 4, "h")
    g.node("Conv", ["h", g.weight("w", (8, 4 // groups, 3, 3))], "y", group=groups, strides=[stride, stride])
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv"]
    entry = result.report["bn_h"]
    assert (entry.action, entry.target) == (Action.FOLDED_INTO_NEXT, "conv_y")


@pytest.mark.parametrize(("trans_b", "alpha", "beta", "bias"), [(0, 1.0, 1.0, False), (1, 0.5, 2.0, True)])
def test_bn_then_gemm_folds_into_next(trans_b: int, alpha: float, beta: float, bias: bool) -> None:
    g = GraphBuilder(seed=20 + trans_b)
    g.batchnorm(g.input("x", ["N", 6]), 6, "h")
    inputs = ["h", g.weight("b", (3, 6) if trans_b else (6, 3))] + ([g.weight("c", (3,))] if bias else [])
    g.node("Gemm", inputs, "y", transB=trans_b, alpha=alpha, beta=beta)
    g.output("y", 2)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Gemm"]
    assert result.report["bn_h"].action is Action.FOLDED_INTO_NEXT


def test_bn_then_matmul_folds_into_next() -> None:
    g = GraphBuilder(seed=22)
    g.batchnorm(g.input("x", ["N", 6]), 6, "h")
    g.node("MatMul", ["h", g.weight("w", (6, 3))], "y")
    g.output("y", 2)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["MatMul", "Add"]
    assert result.report["bn_h"].target == "matmul_y"
    assert [init.name for init in result.model.graph.initializer] == ["w", "w_bias"]


def test_chain_conv_bn_bn_folds_both_into_the_conv() -> None:
    g = GraphBuilder(seed=30)
    g.node("Conv", [g.input("x", ["N", 3, 5, 5]), g.weight("w", (4, 3, 3, 3))], "z", pads=[1, 1, 1, 1])
    g.batchnorm(g.batchnorm("z", 4, "y1"), 4, "y2")
    g.output("y2", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv"]
    assert actions(result) == {"bn_y1": Action.FOLDED_INTO_PREVIOUS, "bn_y2": Action.FOLDED_INTO_PREVIOUS}
    assert [init.name for init in result.model.graph.initializer] == ["w", "w_bias"]  # source names restored


def test_chain_bn_bn_conv_folds_both_into_the_conv() -> None:
    g = GraphBuilder(seed=31)
    g.batchnorm(g.batchnorm(g.input("x", ["N", 4, 5, 5]), 4, "h1"), 4, "h2")
    g.node("Conv", ["h2", g.weight("w", (2, 4, 1, 1)), g.weight("b", (2,))], "y")
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv"]
    assert actions(result) == {"bn_h1": Action.FOLDED_INTO_NEXT, "bn_h2": Action.FOLDED_INTO_NEXT}


def test_mixed_chain_through_relu_folds_back_and_forward() -> None:
    """Conv → BN → Relu → BN → Conv(no padding): one BN goes back, the other forward."""
    g = GraphBuilder(seed=32)
    g.node("Conv", [g.input("x", ["N", 3, 6, 6]), g.weight("w1", (4, 3, 3, 3))], "z", pads=[1, 1, 1, 1])
    g.node("Relu", [g.batchnorm("z", 4, "a")], "r")
    g.node("Conv", [g.batchnorm("r", 4, "h"), g.weight("w2", (5, 4, 2, 2))], "y")
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Relu", "Conv"]
    assert actions(result) == {"bn_a": Action.FOLDED_INTO_PREVIOUS, "bn_h": Action.FOLDED_INTO_NEXT}


def test_bn_without_foldable_neighbour_is_lowered_to_mul_add_or_kept() -> None:
    g = GraphBuilder(seed=40)
    g.node("Relu", [g.batchnorm(g.input("x", ["N", 4, 3, 3]), 4, "h")], "y")
    g.output("y", 4)
    model, feeds = g.model(), g.feeds()
    lowered = fold_and_check(model, feeds, batchnorms_left=0)
    assert ops(lowered.model) == ["Mul", "Add", "Relu"]
    entry = lowered.report["bn_h"]
    assert entry.action is Action.LOWERED and entry.target is None
    assert entry.reason == (
        "not into the previous layer: its input 'x' is a graph input or initializer, not a layer's output; "
        "not into the next layer: its consumer is Relu, not one of Conv, Gemm, MatMul"
    )
    kept = fold_and_check(model, feeds, batchnorms_left=1, lower_unfoldable=False)
    assert ops(kept.model) == ["BatchNormalization", "Relu"]
    assert kept.report["bn_h"].action is Action.KEPT
    assert kept.report["bn_h"].reason.endswith("; not lowered: lowering is disabled")  # type: ignore[union-attr]


def test_fp16_conv_and_bn_with_fp32_statistics_keep_fp16() -> None:
    """Opset 15 lets BN's statistics be float32 for a float16 input; the fused weights stay float16."""
    g = GraphBuilder(seed=50, dtype=np.float16)
    g.node("Conv", [g.input("x", ["N", 3, 5, 5]), g.weight("w", (4, 3, 3, 3))], "z")
    g.batchnorm("z", 4, "y", stats_dtype=np.float32)
    g.node("Relu", [g.batchnorm("y", 4, "y2", stats_dtype=np.float32)], "r")
    g.node("Relu", ["r"], "out")
    g.output("out", 4)
    half = Tolerance.for_dtype("float16")
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0, tolerance=half)
    assert {init.data_type for init in result.model.graph.initializer} == {onnx.TensorProto.FLOAT16}


def test_zero_gamma_and_tiny_variance_give_finite_weights() -> None:
    g = GraphBuilder(seed=60)
    g.node("Conv", [g.input("x", ["N", 2, 4, 4]), g.weight("w", (3, 2, 1, 1))], "z")
    g.batchnorm("z", 3, "y")
    g.output("y", 4)
    model = g.model()
    tensors = {init.name: init for init in model.graph.initializer}
    tensors["y.gamma"].CopyFrom(numpy_helper.from_array(np.array([0.0, 1.0, 2.0], np.float32), "y.gamma"))
    tensors["y.var"].CopyFrom(numpy_helper.from_array(np.array([1e-12, 0.0, 1.0], np.float32), "y.var"))
    result = fold_and_check(model, g.feeds(), batchnorms_left=0)
    for init in result.model.graph.initializer:
        assert np.all(np.isfinite(numpy_helper.to_array(init)))


def test_weights_from_constant_nodes_fold() -> None:
    g = GraphBuilder(seed=70)
    weight = numpy_helper.from_array(g.rng.standard_normal((4, 2, 1, 1)).astype(np.float32), "w")
    g.nodes.append(helper.make_node("Constant", [], ["w"], value=weight, name="const_w"))
    g.node("Conv", [g.input("x", ["N", 2, 3, 3]), "w"], "z")
    g.batchnorm("z", 4, "y")
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv"]  # the orphaned Constant is removed


def test_output_is_deterministic_and_names_are_kept() -> None:
    g = GraphBuilder(seed=80)
    g.node("Conv", [g.input("x", ["N", 3, 5, 5]), g.weight("w", (4, 3, 3, 3))], "z")
    g.node("Relu", [g.batchnorm("z", 4, "y")], "r")
    g.node("Gemm", [g.input("v", ["N", 4]), g.weight("gw", (4, 2))], "gz")
    g.batchnorm("gz", 2, "gy")
    g.output("r", 4)
    g.output("gy", 2)
    model = g.model()
    first, second = fold_onnx(model), fold_onnx(model)
    assert first.model.SerializeToString() == second.model.SerializeToString()
    assert [o.name for o in first.model.graph.output] == ["r", "gy"]
    assert [i.name for i in first.model.graph.input] == ["x", "v"]
    assert first.report.max_output_error is None and all(e.max_error is None for e in first.report)
    assert first.report.summary() == "2/2 BatchNorm folded, 0 lowered, 0 kept"
