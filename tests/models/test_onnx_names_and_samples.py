"""Renaming an ONNX graph's inputs and outputs where subgraphs read them, and the integer and bool sample rules,
on graphs built by hand and run in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from bnfold.models.errors import BadInputError, UsageError
from bnfold.models.export.calibration_samples import InputSlot, Samples, match_samples
from bnfold.models.export.onnx_names import renamed


def _graph_with_a_subgraph() -> onnx.ModelProto:
    """y = If(flag, then: Relu(x) · 2, else: Neg(x)): both branches read the outer input x by name."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["relu"]), helper.make_node("Mul", ["relu", "two"], ["then_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, ["batch", 3])],
        [two],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, ["batch", 3])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        "branches",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_subgraphs_read_the_renamed_input() -> None:
    source = _graph_with_a_subgraph()
    copy = renamed(source, ["pixels", "switch"], ["answer"])
    onnx.checker.check_model(copy, full_check=True)
    x = np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)
    for flag, expected in ((True, np.maximum(x, 0) * 2), (False, -x)):
        got = _run(copy, {"pixels": x, "switch": np.array(flag)})
        np.testing.assert_array_equal(got, expected)
    assert [value.name for value in source.graph.input] == ["x", "flag"]  # the source is left as it was
    names = {name for node in copy.graph.node for attribute in node.attribute for name in attribute.g.node[0].input}
    assert "x" not in names and "pixels" in names
    assert [value.name for value in copy.graph.value_info] == ["answer"]


def test_an_input_returned_as_an_output_cannot_get_two_names() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UsageError) as raised:
        renamed(model, ["a"], ["b", "c"])
    assert str(raised.value) == (
        "the graph returns its input 'x' as an output, so it cannot be called both 'a' and 'c'; give them the "
        "same name or add an Identity node"
    )


def _samples(**arrays: np.ndarray) -> Samples:
    return Samples(Path("s.npz"), dict(arrays), npy=False)


def test_integers_that_do_not_fit_the_input_are_refused() -> None:
    slots = [InputSlot("ids", np.dtype(np.int32), (2,)), InputSlot("mask", np.dtype(np.bool_), (2,))]
    fits = match_samples(_samples(ids=np.array([[1, 2]], dtype=np.int64), mask=np.array([[True, False]])), slots)
    assert fits["ids"].dtype == np.int32 and fits["ids"].tolist() == [[1, 2]]
    with pytest.raises(BadInputError) as raised:
        match_samples(_samples(ids=np.array([[1, 2**40]]), mask=np.array([[True, False]])), slots)
    assert str(raised.value) == (
        "--calibration s.npz array 'ids' holds integers outside the range of int32; input 'ids' is int32: save "
        "values that fit"
    )
    with pytest.raises(BadInputError) as raised:
        match_samples(_samples(ids=np.array([[1, 2]]), mask=np.array([[1, 0]])), slots)
    assert (
        str(raised.value) == "--calibration s.npz array 'mask' has dtype int64; input 'mask' is bool: save bool samples"
    )


def test_symbolic_dims_take_any_size_static_ones_do_not() -> None:
    slot = InputSlot("ids", np.dtype(np.int64), ("sequence", 4))
    for length in (3, 9):
        assert match_samples(_samples(ids=np.zeros((2, length, 4), dtype=np.int64)), [slot])["ids"].shape == (
            2,
            length,
            4,
        )
    with pytest.raises(BadInputError) as raised:
        match_samples(_samples(ids=np.zeros((2, 3, 5), dtype=np.int64)), [slot])
    assert str(raised.value) == (
        "--calibration s.npz holds samples of shape (3, 5), but input 'ids' takes (sequence, 4); save samples of "
        "the model's input shape (samples first)"
    )
