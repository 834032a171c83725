"""A per-channel Mul/Add map is folded only where it is exact, under the guards of BatchNormalization, and
each refusal says why; scalars and full tensors are not per-channel maps and get no report entry."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from bnfold.folding.onnx_fold import fold_onnx
from bnfold.folding.plan import ALREADY_MUL_ADD
from bnfold.folding.report import Action
from tests.onnx.affine_graphs import scale_shift
from tests.onnx.graphs import GraphBuilder, fold_and_check, ops


def _conv(g: GraphBuilder, **attributes: object) -> str:
    return g.node("Conv", [g.input("x", ["N", 3, 5, 5]), g.weight("w", (4, 3, 3, 3))], "z", **attributes)


def test_zero_padded_next_conv_is_refused() -> None:
    g = GraphBuilder(seed=20)
    xn = scale_shift(g, g.input("x", ["N", 3, 5, 5]), (1, 3, 1, 1), "xn")
    g.output(g.node("Conv", [xn, g.weight("w", (4, 3, 3, 3))], "y", pads=[1, 1, 1, 1]), 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Mul", "Add", "Conv"]
    entry = result.report["mul_xn_scaled"]
    assert (entry.action, entry.kind) == (Action.KEPT, "affine")
    assert entry.reason == (
        "not into the previous layer: its input 'x' is a graph input or initializer, not a layer's output; "
        "not into the next layer: Conv 'conv_y' pads with zeros (auto_pad=NOTSET, pads=[1, 1, 1, 1]), so its "
        f"border would receive the BN's shift instead of zero; not lowered: {ALREADY_MUL_ADD}"
    )


def test_unpadded_next_conv_takes_it() -> None:
    g = GraphBuilder(seed=21)
    xn = scale_shift(g, g.input("x", ["N", 3, 5, 5]), (3, 1, 1), "xn")
    g.output(g.node("Conv", [xn, g.weight("w", (4, 3, 3, 3))], "y"), 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv"]
    assert result.report["mul_xn_scaled"].action is Action.FOLDED_INTO_NEXT


def test_producer_read_elsewhere_is_refused() -> None:
    g = GraphBuilder(seed=22)
    z = _conv(g)
    y = scale_shift(g, z, (1, 4, 1, 1), "a")
    g.output(g.node("Add", [y, z], "y"), 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Mul", "Add", "Add"]
    reason = str(result.report["mul_a_scaled"].reason)
    assert reason.startswith("not into the previous layer: the output of Conv 'conv_z' is needed elsewhere: 'z' has 2")


def test_producer_output_that_is_a_graph_output_is_refused() -> None:
    g = GraphBuilder(seed=23)
    scale_shift(g, _conv(g), (1, 4, 1, 1), "y")
    g.output("y", 4)
    g.output("z", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model).count("Mul") == 1
    assert "'z' is a graph output" in str(result.report["mul_y_scaled"].reason)


def test_shared_conv_weight_is_cloned_and_the_other_conv_untouched() -> None:
    g = GraphBuilder(seed=24)
    x = g.input("x", ["N", 3, 5, 5])
    w = g.weight("w", (4, 3, 3, 3))
    scale_shift(g, g.node("Conv", [x, w], "z1"), (1, 4, 1, 1), "y1")
    g.node("Conv", [x, w], "y2")
    g.output("y1", 4)
    g.output("y2", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Conv"]
    weights = {init.name: init for init in result.model.graph.initializer}
    assert "w" in weights and "w_bnfold" in weights
    assert helper.printable_tensor_proto(weights["w"]) == helper.printable_tensor_proto(g.initializers[0])


def test_scalar_and_full_tensor_operands_are_not_maps_and_not_reported() -> None:
    g = GraphBuilder(seed=25)
    z = _conv(g)
    scaled = g.node("Mul", [z, g.const("k", np.array(g.rng.random() + 0.5, np.float32))], "scaled")
    g.output(g.node("Add", [scaled, g.weight("full", (1, 4, 3, 3))], "y"), 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Mul", "Add"]
    assert result.report.total == 0


def test_per_channel_operand_that_is_a_graph_input_is_refused() -> None:
    g = GraphBuilder(seed=26)
    z = _conv(g)
    g.output(g.node("Mul", [z, g.input("s", [1, 4, 1, 1])], "y"), 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Mul"]
    entry = result.report["mul_y"]
    assert (entry.action, entry.kind) == (Action.KEPT, "affine")
    assert entry.reason == "the Mul operand 's' is a graph input (it can change at run time)"


def test_runtime_operand_that_is_not_an_input_is_not_a_map() -> None:
    """x · sigmoid(pool(x)) (a squeeze-excitation gate) is computed at run time: no entry at all."""
    g = GraphBuilder(seed=27)
    z = _conv(g)
    gate = g.node("Sigmoid", [g.node("GlobalAveragePool", [z], "pool")], "gate")
    g.output(g.node("Mul", [z, gate], "y"), 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert result.report.total == 0


def test_broadcast_along_a_spatial_axis_is_refused() -> None:
    g = GraphBuilder(seed=28)
    scale_shift(g, _conv(g), (1, 1, 3, 1), "y")
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Mul", "Add"]
    assert str(result.report["mul_y_scaled"].reason).startswith(
        "not into the previous layer: the Mul/Add map scales axis 2 of 'z', not the channel axis 1 of Conv 'conv_z'"
    )


def test_nhwc_map_after_a_transpose_that_does_not_bring_channels_last_is_refused() -> None:
    g = GraphBuilder(seed=29)
    z = _conv(g)
    moved = g.node("Transpose", [z], "moved", perm=[0, 2, 1, 3])  # (N, H, C, W): last axis is W
    scale_shift(g, moved, (3,), "y")
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Transpose", "Mul", "Add"]
    assert "its producer is Transpose" in str(result.report["mul_y_scaled"].reason)


def test_integer_and_batch_axis_operands_are_not_maps() -> None:
    """A Mul of int64 tensors (shape arithmetic) and a Mul along the batch axis are not channel maps."""
    g = GraphBuilder(seed=30)
    g.input("i", [2, 3])
    g.inputs[-1].type.tensor_type.elem_type = TensorProto.INT64
    g.outputs.append(helper.make_tensor_value_info("iy", TensorProto.INT64, [2, 3]))
    g.node("Mul", ["i", g.const("k", g.rng.integers(1, 5, (1, 3)))], "iy")
    g.node("Mul", [g.input("x", [2, 3]), g.weight("per_sample", (2, 1))], "y")
    g.output("y", 2)
    result = fold_onnx(g.model())
    assert result.report.total == 0
    assert ops(result.model) == ["Mul", "Mul"]
