"""folding/onnx_files.py: the size rule, and writing a model with external data (what lands on disk).

The 1 GiB half of the rule (inline tensors over LARGE_MODEL_BYTES) needs a gigabyte to exercise; it is run by
bench/large_model.py, not here. The external-data half is what every small external-data model of the tests
takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from bnfold.contract.external_data import external_references
from bnfold.folding.onnx_files import LARGE_MODEL_BYTES, SMALL_TENSOR_BYTES, by_file, save_model


def conv_model(out_channels: int) -> onnx.ModelProto:
    """x → Conv(W [out, 3, 3, 3], b [out]) → y, random weights."""
    rng = np.random.default_rng(out_channels)
    w = numpy_helper.from_array(rng.normal(size=(out_channels, 3, 3, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=out_channels).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_channels, 6, 6])], [w, b],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_the_rule_sends_external_data_down_the_file_path(tmp_path: Path) -> None:
    model = conv_model(16)  # W is 1,728 bytes: external when saved so
    assert LARGE_MODEL_BYTES == 1 << 30
    assert not by_file(model)
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data")
    assert by_file(onnx.load(str(tmp_path / "m.onnx"), load_external_data=False))
    assert not by_file(onnx.load(str(tmp_path / "m.onnx")))  # its data loaded: small and inline again


def test_large_tensors_go_to_one_data_file_small_ones_stay_inline(tmp_path: Path) -> None:
    model = conv_model(16)
    save_model(ir.serde.deserialize_model(model), tmp_path / "v.onnx", external=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["v.onnx", "v.onnx.data"]  # no temporaries
    references = external_references((tmp_path / "v.onnx").read_bytes())
    assert [(reference.tensor, reference.location) for reference in references] == [("W", "v.onnx.data")]
    assert (tmp_path / "v.onnx.data").stat().st_size == 16 * 27 * 4 >= SMALL_TENSOR_BYTES
    written = onnx.load(str(tmp_path / "v.onnx"))
    for original, loaded in zip(model.graph.initializer, written.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(original), numpy_helper.to_array(loaded))


def test_a_model_without_a_large_tensor_gets_no_data_file(tmp_path: Path) -> None:
    model = conv_model(4)  # W is 432 bytes
    save_model(ir.serde.deserialize_model(model), tmp_path / "v.onnx", external=True)
    assert [path.name for path in tmp_path.iterdir()] == ["v.onnx"]
    assert external_references((tmp_path / "v.onnx").read_bytes()) == []
