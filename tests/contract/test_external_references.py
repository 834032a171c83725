"""The contract's protobuf walk finds exactly the externally stored tensors onnx itself finds (initializers,
Constant attributes, If-branch initializers and attributes; the model also holds a sparse initializer), none in an
inline model, and refuses a truncated file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import _get_all_tensors, convert_model_to_external_data, uses_external_data

from bnfold.contract.errors import ContractError
from bnfold.contract.external_data import ExternalReference, external_references


def _tensor(name: str, rng: np.random.Generator) -> TensorProto:
    return numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), name)


def _nested_model(rng: np.random.Generator) -> onnx.ModelProto:
    branch = helper.make_graph(
        [helper.make_node("Add", ["x", "branch_w"], ["y_then"])], "then", [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [4, 4])], [_tensor("branch_w", rng)],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["y_else"], value=_tensor("const_w", rng))], "else", [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [4, 4])],
    )  # fmt: skip
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(rng.normal(size=300).astype(np.float32), "sparse_w"),
        numpy_helper.from_array(np.arange(300, dtype=np.int64), "sparse_w_indices"), [20, 20],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "main_w"], ["m"]), helper.make_node("If", ["c"], ["y"], then_branch=branch,
                                                                           else_branch=other)],
        "main", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4]),
                 helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [_tensor("main_w", rng)],
        sparse_initializer=[sparse],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_every_external_tensor_is_found_where_onnx_finds_it(tmp_path: Path) -> None:
    model = _nested_model(np.random.default_rng(7))
    convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True)
    onnx.save_model(model, tmp_path / "m.onnx")
    found = external_references((tmp_path / "m.onnx").read_bytes())
    reloaded = onnx.load_model(str(tmp_path / "m.onnx"), load_external_data=False)
    expected = [
        ExternalReference(t.name, next(e.value for e in t.external_data if e.key == "location"))
        for t in _get_all_tensors(reloaded)
        if uses_external_data(t)
    ]
    assert {"main_w", "branch_w", "const_w"} <= {reference.tensor for reference in expected}
    assert sorted(found, key=str) == sorted(expected, key=str)


def test_an_inline_model_has_no_external_references() -> None:
    model = _nested_model(np.random.default_rng(8))
    assert external_references(model.SerializeToString()) == []


def test_a_truncated_file_is_refused() -> None:
    data = _nested_model(np.random.default_rng(9)).SerializeToString()
    with pytest.raises(ContractError, match=r"^the ONNX file is truncated \("):
        external_references(data[: len(data) // 2])


def test_a_group_field_is_skipped_and_an_impossible_wire_type_refused() -> None:
    model = _nested_model(np.random.default_rng(10))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, size_threshold=0, location="w.data")
    data = model.SerializeToString()
    group = bytes([0x9B, 0x06, 0x08, 0x01, 0x9C, 0x06])  # keys 99<<3|3 and 99<<3|4 around field 1 = 1: a group
    assert external_references(data + group) == external_references(data) != []
    with pytest.raises(ContractError, match=r"^the ONNX file is not a valid protobuf \(wire type 6\); rebuild"):
        external_references(data + bytes([8 << 3 | 6]))
