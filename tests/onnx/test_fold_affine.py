"""Per-channel Mul/Add maps (inference BN as tf2onnx, paddle2onnx and hand-written `x * s + t` write it)
fold into the neighbouring Conv, ConvTranspose, Gemm or MatMul exactly like BatchNormalization: outputs
equal the reference evaluator's on the unfolded graph, no per-channel Mul is left, and each entry says
it was an affine map and which nodes it came from."""

from __future__ import annotations

import numpy as np
import pytest

from bnfold.folding.report import Action, FoldReport
from tests.onnx.affine_graphs import nhwc_conv, scale_shift
from tests.onnx.graphs import GraphBuilder, fold_and_check, ops


def _only_entry(report: FoldReport) -> tuple[str, Action, str | None]:
    assert len(report) == 1, report.entries
    entry = report.entries[0]
    assert entry.kind == "affine"
    return entry.bn, entry.action, entry.target


@pytest.mark.parametrize("seed", [0, 1])
def test_tf2onnx_nhwc_conv_then_mul_add_folds_into_the_conv_through_the_transpose(seed: int) -> None:
    g = GraphBuilder(seed=seed)
    z = nhwc_conv(g, g.input("x", ["N", 6, 6, 3]), 3, 5, "z", pads=[1, 1, 1, 1])
    scale_shift(g, z, (5,), "y", swap=bool(seed))
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Transpose", "Conv", "Transpose"]
    assert _only_entry(result.report) == ("mul_y_scaled", Action.FOLDED_INTO_PREVIOUS, "conv_z_conv")
    assert result.report.entries[0].sources == ("mul_y_scaled", "add_y")
    assert result.report.summary() == "1/1 BatchNorm folded, 0 lowered, 0 kept (1 of the 1 are affine maps)"


def test_nhwc_depthwise_conv_then_mul_add_folds() -> None:
    g = GraphBuilder(seed=2)
    z = nhwc_conv(g, g.input("x", ["N", 5, 5, 4]), 4, 4, "z", group=4, pads=[1, 1, 1, 1])
    scale_shift(g, z, (4,), "y")
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert "Mul" not in ops(result.model) and "Add" not in ops(result.model)
    assert _only_entry(result.report)[1] is Action.FOLDED_INTO_PREVIOUS


@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (4, 1, 1)])
def test_nchw_conv_transpose_then_mul_add_folds(shape: tuple[int, ...]) -> None:
    g = GraphBuilder(seed=3 + len(shape))
    w = g.weight("w", (3, 4, 3, 3))
    z = g.node("ConvTranspose", [g.input("x", ["N", 3, 4, 4]), w, g.weight("b", (4,))], "z", strides=[2, 2])
    scale_shift(g, z, shape, "y", swap=True)
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["ConvTranspose"]
    assert _only_entry(result.report)[1:] == (Action.FOLDED_INTO_PREVIOUS, "convtranspose_z")


def test_dense_matmul_bias_then_mul_add_folds_into_the_matmul() -> None:
    """Keras Dense → BN as tf2onnx writes it: MatMul → Add(bias) → Mul(s) → Add(t)."""
    g = GraphBuilder(seed=5)
    z = g.node("MatMul", [g.input("x", ["N", 6]), g.weight("w", (6, 4))], "z")
    biased = g.node("Add", [z, g.weight("b", (4,))], "zb")
    scale_shift(g, biased, (4,), "y")
    g.output("y", 2)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["MatMul", "Add"]
    assert _only_entry(result.report)[1:] == (Action.FOLDED_INTO_PREVIOUS, "matmul_z")


def test_mlp_input_mul_add_folds_forward_into_the_matmul() -> None:
    """BN at an MLP's input: Mul → Add on the graph input, then MatMul."""
    g = GraphBuilder(seed=6)
    xn = scale_shift(g, g.input("x", ["N", 7]), (7,), "xn")
    z = g.node("MatMul", [xn, g.weight("w", (7, 3))], "z")
    g.output(g.node("Relu", [z], "y"), 2)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["MatMul", "Add", "Relu"]
    assert _only_entry(result.report)[1:] == (Action.FOLDED_INTO_NEXT, "matmul_z")
    assert result.report.entries[0].max_error is not None


def test_constant_sub_div_sqrt_chain_is_folded_first_then_into_the_conv() -> None:
    """s = γ / √(σ² + ε), t = β − μ·s as nodes over constants (paddle2onnx style) become one tensor each."""
    g = GraphBuilder(seed=7)
    c = 4
    gamma, beta, mean = (g.weight(name, (c, 1, 1)) for name in ("gamma", "beta", "mean"))
    var = g.const("var", (g.rng.random((c, 1, 1)) + 0.2).astype(np.float32))
    eps = g.const("eps", np.array(1e-3, np.float32))
    root = g.node("Sqrt", [g.node("Add", [var, eps], "var_eps")], "root")
    s = g.node("Div", [gamma, root], "s")
    t = g.node("Sub", [beta, g.node("Mul", [mean, s], "mean_s")], "t")
    z = g.node("Conv", [g.input("x", ["N", 3, 5, 5]), g.weight("w", (c, 3, 3, 3))], "z")
    g.output(g.node("Add", [g.node("Mul", [z, s], "zs"), t], "y"), 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv"]
    assert _only_entry(result.report)[1] is Action.FOLDED_INTO_PREVIOUS


def test_lone_per_channel_add_is_a_map_with_unit_scale() -> None:
    g = GraphBuilder(seed=8)
    z = g.node("Conv", [g.input("x", ["N", 2, 4, 4]), g.weight("w", (3, 2, 1, 1))], "z")
    g.output(g.node("Add", [g.weight("t", (1, 3, 1, 1)), z], "y"), 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv"]
    assert _only_entry(result.report)[1] is Action.FOLDED_INTO_PREVIOUS


def test_report_json_carries_kind_and_sources() -> None:
    g = GraphBuilder(seed=9)
    z = g.node("Conv", [g.input("x", ["N", 2, 4, 4]), g.weight("w", (3, 2, 3, 3))], "z")
    g.batchnorm(scale_shift(g, z, (1, 3, 1, 1), "a"), 3, "y")
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    data = result.report.to_json()
    assert [(e["bn"], e["kind"], e["sources"], e["action"]) for e in data["entries"]] == [
        ("mul_a_scaled", "affine", ["mul_a_scaled", "add_a"], "folded_into_previous"),
        ("bn_y", "batchnorm", ["bn_y"], "folded_into_previous"),
    ]
    assert data["summary"] == "2/2 BatchNorm folded, 0 lowered, 0 kept (1 of the 2 are affine maps)"
    assert FoldReport.from_json(data) == result.report
    old = {"entries": [{"bn": "b", "action": "kept"}], "max_output_error": None}
    assert FoldReport.from_json(old).entries[0].kind == "batchnorm"
    assert FoldReport.from_json(old).entries[0].sources == ()
