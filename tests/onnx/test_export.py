"""export_onnx keeps BatchNorm, is deterministic and valid, has a dynamic batch axis; count_op counts deep."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from bnfold.folding.errors import FoldingError
from bnfold.folding.export import count_op, export_onnx
from tests.onnx.nets import ConvNet
from tests.onnx.ort_helpers import randomise_batchnorm, run_ort


@pytest.fixture(scope="module")
def convnet() -> ConvNet:
    torch.manual_seed(0)
    model = ConvNet()
    randomise_batchnorm(model, seed=1)
    return model.eval()


@pytest.fixture(scope="module")
def exported(convnet: ConvNet) -> onnx.ModelProto:
    return export_onnx(convnet, (torch.randn(2, 3, 6, 6),), input_names=["image"], output_names=["logits"])


def test_export_keeps_every_batchnorm_and_is_valid(exported: onnx.ModelProto) -> None:
    assert count_op(exported) == 3
    assert count_op(exported, "Conv") == 1 and count_op(exported, "ConvTranspose") == 1
    onnx.checker.check_model(exported, full_check=True)
    assert [i.name for i in exported.graph.input] == ["image"]
    assert [o.name for o in exported.graph.output] == ["logits"]


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_onnxruntime_matches_pytorch_at_other_batch_sizes(
    convnet: ConvNet, exported: onnx.ModelProto, batch: int
) -> None:
    image = torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = convnet(image).numpy()
    (actual,) = run_ort(exported, {"image": image.numpy()})
    assert actual.shape == (batch, 5)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-5, atol=1e-5)


def test_batch_axis_is_dynamic_on_inputs_and_outputs(exported: onnx.ModelProto) -> None:
    for value in [*exported.graph.input, *exported.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_same_model_exports_byte_identical(convnet: ConvNet, exported: onnx.ModelProto) -> None:
    again = export_onnx(convnet, (torch.randn(2, 3, 6, 6),), input_names=["image"], output_names=["logits"])
    assert again.SerializeToString() == exported.SerializeToString()
    assert "stack_trace" not in again.SerializeToString().decode("latin-1")


def test_opset_is_honoured() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).eval()
    proto = export_onnx(model, (torch.randn(2, 2, 4, 4),), input_names=["x"], output_names=["y"], opset=18)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    assert count_op(proto) == 1


def test_training_mode_is_refused_with_the_fix() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).train()
    with pytest.raises(FoldingError, match=r"^module '<root>' is in training mode.*call model\.eval\(\)"):
        export_onnx(model, (torch.randn(2, 2, 4, 4),), input_names=["x"], output_names=["y"])


def test_name_count_mismatch_is_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 2)).eval()
    with pytest.raises(FoldingError, match=r"^2 input_names for 1 example inputs; give one name per input$"):
        export_onnx(model, (torch.randn(2, 2),), input_names=["a", "b"], output_names=["y"])


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            return x * 2
        return x


def test_exporter_failure_becomes_one_line_folding_error() -> None:
    with pytest.raises(FoldingError) as caught:
        export_onnx(DataDependent().eval(), (torch.randn(2, 3),), input_names=["x"], output_names=["y"])
    message = str(caught.value)
    assert message.startswith("torch.onnx.export could not capture DataDependent (")
    assert "\n" not in message and "traceable by torch.export" in message


class BatchReduction(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=0)  # (F,): the batch axis is gone


def test_output_without_batch_axis_is_refused() -> None:
    with pytest.raises(FoldingError, match=r"^ONNX 'total' has no dynamic batch axis 0"):
        export_onnx(BatchReduction().eval(), (torch.randn(3, 4),), input_names=["x"], output_names=["total"])


def test_count_op_descends_into_subgraphs_and_functions() -> None:
    bn_inputs = ["x", "s", "b", "m", "v"]
    branch = helper.make_graph(
        [helper.make_node("BatchNormalization", bn_inputs, ["y1"])],
        "then",
        [],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y2"])],
        "else",
        [],
        [helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)],
    )
    function = helper.make_function(
        "local",
        "Norm",
        bn_inputs,
        ["y"],
        [helper.make_node("BatchNormalization", bn_inputs, ["y"])],
        [helper.make_opsetid("", 15)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("BatchNormalization", bn_inputs, ["top"]),
            helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=other),
            helper.make_node("Norm", bn_inputs, ["w"], domain="local"),
        ],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in bn_inputs]
        + [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("top", "z", "w")],
    )
    model = helper.make_model(graph, functions=[function])
    assert count_op(model) == 3
    assert count_op(model, "If") == 1 and count_op(model, "Identity") == 1 and count_op(model, "Conv") == 0
