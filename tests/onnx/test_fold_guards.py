"""fold_onnx never folds what it must not, and says why: batch statistics (training_mode), a producer also
read elsewhere, a zero-padded next Conv, a channel axis that only lines up by shape, a weight shared by two
nodes."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.folding.errors import FoldingError
from bnfold.folding.onnx_fold import fold_onnx
from bnfold.folding.report import Action
from tests.onnx.graphs import GraphBuilder, fold_and_check, ops
from tests.onnx.ort_helpers import run_ort


def _conv_bn(seed: int, **bn_attributes: Any) -> GraphBuilder:
    g = GraphBuilder(seed=seed)
    g.node("Conv", [g.input("x", ["N", 3, 5, 5]), g.weight("w", (4, 3, 3, 3))], "z")
    g.batchnorm("z", 4, "y", **bn_attributes)
    g.output("y", 4)
    return g


def test_training_mode_bn_is_kept_untouched() -> None:
    """training_mode = 1 normalises with batch statistics; folding it is wrong."""
    g = _conv_bn(seed=1, training_mode=1)
    g.nodes[-1].output.extend(["running_mean", "running_var"])
    model = g.model(15)
    result = fold_onnx(model)
    onnx.checker.check_model(result.model, full_check=True)
    assert ops(result.model) == ["Conv", "BatchNormalization"]
    assert result.model.graph.node[1] == model.graph.node[1]
    entry = result.report["bn_y"]
    assert entry.action is Action.KEPT
    assert entry.reason == "training_mode = 1: it normalises with batch statistics, not the stored running statistics"
    feeds = g.feeds()
    np.testing.assert_array_equal(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0])


def test_opset9_bn_with_statistics_outputs_is_kept() -> None:
    g = _conv_bn(seed=2)
    bn = g.nodes[-1]
    statistics = ["mean_out", "var_out", "saved_mean", "saved_var"]
    bn.output.extend(statistics)
    g.outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in statistics]
    result = fold_onnx(g.model(9))
    onnx.checker.check_model(result.model, full_check=True)
    assert ops(result.model) == ["Conv", "BatchNormalization"]
    reason = f"it also outputs running/saved statistics {statistics} (training behaviour)"
    assert result.report["bn_y"].reason == reason


@pytest.mark.parametrize("role", ["gamma", "mean", "var"])
def test_bn_statistics_that_are_graph_inputs_are_kept(role: str) -> None:
    g = _conv_bn(seed=3)
    g.initializers = [t for t in g.initializers if t.name != f"y.{role}"]
    g.input(f"y.{role}", [4])
    model = g.model()
    result = fold_onnx(model)
    assert ops(result.model) == ["Conv", "BatchNormalization"]
    assert result.report["bn_y"].action is Action.KEPT
    assert f"'y.{role}' is a graph input (it can change at run time)" in str(result.report["bn_y"].reason)


def test_initializer_also_listed_as_graph_input_is_not_a_constant() -> None:
    """An initializer that is also a graph input is only a default: a caller may feed another value."""
    g = _conv_bn(seed=4)
    g.input("w", [4, 3, 3, 3])
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    entry = result.report["bn_y"]
    assert entry.action is Action.LOWERED
    assert entry.reason is not None and "weight 'w' is a graph input (it can change at run time)" in entry.reason
    assert "w" in {init.name for init in result.model.graph.initializer}


def test_legacy_ir3_initializers_listed_as_inputs_are_weights() -> None:
    """IR version 3 requires every initializer to be a graph input too: there they are the weights."""
    g = _conv_bn(seed=20)
    model = g.model(8)
    for weight in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(weight.name, weight.data_type, weight.dims))
    model.ir_version = 3
    result = fold_and_check(model, g.feeds(), batchnorms_left=0)
    assert result.report["bn_y"].action is Action.FOLDED_INTO_PREVIOUS
    assert result.model.ir_version == 4 and [value.name for value in result.model.graph.input] == ["x"]


def test_conv_weight_that_is_a_graph_input_is_not_folded() -> None:
    g = GraphBuilder(seed=5)
    g.node("Conv", [g.input("x", ["N", 3, 5, 5]), g.input("w", [4, 3, 3, 3])], "z")
    g.batchnorm("z", 4, "y")
    g.output("y", 4)
    feeds = g.feeds()
    result = fold_and_check(g.model(), feeds, batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Mul", "Add"]
    assert result.report["bn_y"].action is Action.LOWERED


def test_statistics_computed_at_run_time_are_kept() -> None:
    """A BN whose mean comes from ReduceMean of the batch (torch track_running_stats=False export)."""
    g = _conv_bn(seed=6)
    g.initializers = [t for t in g.initializers if t.name != "y.mean"]
    g.nodes.insert(1, helper.make_node("ReduceMean", ["z"], ["y.mean"], axes=[0, 2, 3], keepdims=0))
    result = fold_onnx(g.model(15))
    assert ops(result.model) == ["Conv", "ReduceMean", "BatchNormalization"]
    assert result.report["bn_y"].reason == (
        "input_mean (μ) 'y.mean' is computed at run time, not a constant initializer"
    )


def test_producer_output_with_another_consumer_is_not_folded_into() -> None:
    """Conv feeding both the BN and a residual Add."""
    g = GraphBuilder(seed=7)
    g.node("Conv", [g.input("x", ["N", 4, 5, 5]), g.weight("w", (4, 4, 3, 3))], "z", pads=[1, 1, 1, 1])
    g.node("Add", [g.batchnorm("z", 4, "b"), "z"], "y")
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Mul", "Add", "Add"]
    reason = result.report["bn_b"].reason
    assert reason is not None and reason.startswith(
        "not into the previous layer: the output of Conv 'conv_z' is needed elsewhere: 'z' has 2 consumers, not one; "
        "folding would change what the other readers see; not into the next layer: "
    )


def test_producer_output_that_is_a_graph_output_is_not_folded_into() -> None:
    g = _conv_bn(seed=8)
    g.output("z", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Mul", "Add"]
    assert "'z' is a graph output" in str(result.report["bn_y"].reason)


def test_bn_output_with_two_consumers_is_not_folded_forward() -> None:
    g = GraphBuilder(seed=9)
    g.batchnorm(g.input("x", ["N", 4, 4, 4]), 4, "h")
    g.node("Conv", ["h", g.weight("w", (2, 4, 1, 1))], "y1")
    g.node("Relu", ["h"], "y2")
    g.output("y1", 4)
    g.output("y2", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Mul", "Add", "Conv", "Relu"]
    assert "not into the next layer: 'h' has 2 consumers, not one" in str(result.report["bn_h"].reason)


@pytest.mark.parametrize(
    "padding",
    [{"pads": [1, 1, 1, 1]}, {"pads": [0, 1, 0, 0]}, {"auto_pad": "SAME_UPPER"}],
    ids=["pads", "one_side", "same"],
)
def test_bn_then_padded_conv_is_not_folded_forward(padding: dict[str, object]) -> None:
    """The zero-padded border would receive BN's shift."""
    g = GraphBuilder(seed=10)
    g.batchnorm(g.input("x", ["N", 4, 5, 5]), 4, "h")
    g.node("Conv", ["h", g.weight("w", (3, 4, 3, 3))], "y", **padding)
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Mul", "Add", "Conv"]
    reason = str(result.report["bn_h"].reason)
    assert "not into the next layer: Conv 'conv_y' pads with zeros (auto_pad=" in reason
    assert "so its border would receive the BN's shift instead of zero" in reason


def test_bn_then_gemm_with_trans_a_is_not_folded_forward() -> None:
    g = GraphBuilder(seed=11)
    g.batchnorm(g.input("x", [6, 4]), 4, "h")
    g.node("Gemm", ["h", g.weight("b", (6, 3))], "y", transA=1)
    g.output("y", 2)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert result.report["bn_h"].action is Action.LOWERED
    assert "transA = 1" in str(result.report["bn_h"].reason)


def test_matmul_on_3d_input_is_not_folded() -> None:
    """On (N, L, C) BN's channel axis 1 is L, not the MatMul's feature axis C."""
    g = GraphBuilder(seed=12)
    g.node("MatMul", [g.input("x", ["N", 5, 6]), g.weight("w", (6, 4))], "z")
    g.batchnorm("z", 5, "y")
    g.output("y", 3)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["MatMul", "Mul", "Add"]
    assert "MatMul output rank is 3" in str(result.report["bn_y"].reason)


def test_shared_weight_is_cloned_never_mutated() -> None:
    """Two Convs read one weight; only one is followed by a BN."""
    g = GraphBuilder(seed=13)
    x = g.input("x", ["N", 3, 5, 5])
    g.weight("w", (4, 3, 3, 3))
    g.weight("b", (4,))
    g.node("Conv", [x, "w", "b"], "z1")
    g.node("Conv", [x, "w", "b"], "z2")
    g.batchnorm("z1", 4, "y1")
    g.output("y1", 4)
    g.output("z2", 4)
    model = g.model()
    result = fold_and_check(model, g.feeds(), batchnorms_left=0)
    tensors = {init.name: init for init in result.model.graph.initializer}
    originals = {init.name: init for init in model.graph.initializer}
    assert tensors["w"] == originals["w"] and tensors["b"] == originals["b"]
    second_conv = next(node for node in result.model.graph.node if node.output[0] == "z2")
    assert list(second_conv.input) == ["x", "w", "b"]
    first_conv = next(node for node in result.model.graph.node if node.output[0] == "y1")
    assert list(first_conv.input[1:]) == ["w_bnfold", "b_bnfold"]


def test_bn_inside_a_subgraph_is_reported_and_kept() -> None:
    g = _conv_bn(seed=14)
    then_graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["z", "y.gamma", "y.beta", "y.mean", "y.var"], ["t"], name="inner_bn")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["z"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    g.nodes.insert(
        1, helper.make_node("If", [g.input("flag", [])], ["branch"], then_branch=then_graph, else_branch=else_graph)
    )
    g.inputs[-1].type.tensor_type.elem_type = TensorProto.BOOL
    g.output("branch", 4)
    result = fold_onnx(g.model())
    onnx.checker.check_model(result.model, full_check=True)
    assert [(e.bn, e.action) for e in result.report] == [("bn_y", Action.LOWERED), ("inner_bn", Action.KEPT)]
    assert result.report["inner_bn"].reason == "inside a subgraph; only the main graph is folded"


def test_non_positive_variance_is_kept_with_the_fix() -> None:
    g = _conv_bn(seed=15, epsilon=0.0)
    model = g.model()
    var = next(t for t in model.graph.initializer if t.name == "y.var")
    var.CopyFrom(numpy_helper.from_array(np.array([1.0, 0.0, 1.0, 1.0], np.float32), "y.var"))
    result = fold_onnx(model)
    assert result.report["bn_y"].action is Action.KEPT
    assert "running_var + eps is not positive" in str(result.report["bn_y"].reason)


def test_old_opset_spatial_zero_is_kept() -> None:
    g = _conv_bn(seed=16, spatial=0)
    result = fold_onnx(g.model(7))
    assert result.report["bn_y"].reason == "spatial = 0 normalises per element, not per channel; it cannot be folded"


def test_bad_inputs_are_one_line_folding_errors() -> None:
    with pytest.raises(FoldingError, match=r"^fold_onnx needs an onnx.ModelProto, got bytes; load it with onnx.load$"):
        fold_onnx(b"not a model")  # type: ignore[arg-type]
    broken = _conv_bn(seed=17).model()
    broken.graph.node[0].input[0] = "nowhere"
    with pytest.raises(FoldingError, match=r"^the input is not a valid ONNX model \(.*\); fix or re-export it$"):
        fold_onnx(broken)
    g = _conv_bn(seed=18)
    with pytest.raises(FoldingError, match=r"^example_inputs lacks \['x'\]; give one array per graph input \['x'\]$"):
        fold_onnx(g.model(), {"image": np.zeros((1, 3, 5, 5), np.float32)})


def test_duplicate_node_names_get_distinct_report_entries() -> None:
    """ONNX does not require unique node names (onnxruntime does); the report must say which BN is which."""
    g = GraphBuilder(seed=19)
    g.node("Conv", [g.input("x", ["N", 3, 4, 4]), g.weight("w", (4, 3, 1, 1))], "z")
    g.node("Relu", [g.batchnorm("z", 4, "y1")], "r")
    g.batchnorm("r", 4, "y2")
    g.output("y2", 4)
    for node in g.nodes:
        if node.op_type == "BatchNormalization":
            node.name = "bn"
    result = fold_onnx(g.model())
    onnx.checker.check_model(result.model, full_check=True)
    assert [(e.bn, e.action) for e in result.report] == [("bn", Action.FOLDED_INTO_PREVIOUS), ("bn#2", Action.LOWERED)]
    assert ops(result.model) == ["Conv", "Relu", "Mul", "Add"]


def test_weight_shared_by_two_conv_bn_pairs_gets_one_clone_per_site() -> None:
    """Fold per call site: each Conv gets its own fused copy of the shared weight."""
    g = GraphBuilder(seed=21)
    x = g.input("x", ["N", 3, 5, 5])
    g.weight("w", (4, 3, 3, 3))
    g.node("Conv", [x, "w"], "z1")
    g.node("Conv", [x, "w"], "z2")
    g.node("Add", [g.batchnorm("z1", 4, "y1"), g.batchnorm("z2", 4, "y2")], "y")
    g.output("y", 4)
    result = fold_and_check(g.model(), g.feeds(), batchnorms_left=0)
    assert ops(result.model) == ["Conv", "Conv", "Add"]
    weights = [list(node.input)[1] for node in result.model.graph.node if node.op_type == "Conv"]
    assert weights == ["w", "w_bnfold_2"]  # the original is gone, so the first clone took its name
