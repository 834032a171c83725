"""fold-and-export of an ONNX file: one whose BN the exporter already fused gets a note saying how to
re-export it; one whose BN is written as per-channel Mul/Add folds and reports the maps as such."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from tests.models import tiny_nets
from tests.models.cli_helpers import bnfold
from tests.onnx.scale_shift_nets import ScaleShiftNet

EXPECTED_NOTE = (
    "note: the model has no BatchNorm: folded.onnx equals unfolded.onnx. If it was exported from PyTorch, the "
    "exporter may have fused the BatchNorm into the convolutions already (torch.onnx.export does by default): "
    "re-export with torch.onnx.export(model, args, dynamo=True, optimize=False), or with dynamo=False and "
    "do_constant_folding=False, so that bnfold folds it and verifies the fold"
)

TF2ONNX_NOTE = (
    "note: the model has no BatchNorm: folded.onnx equals unfolded.onnx. It was converted by tf2onnx, whose "
    "TensorFlow constant folding already fuses a Conv2D's BatchNorm into the Conv: nothing is left to fold, and "
    "there is no unfused graph to verify against"
)


def _export(model: torch.nn.Module, path: Path, **options: object) -> list[str]:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (torch.randn(2, 3, 8, 8),),
            dynamo=True,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
            **options,
        )
    assert program is not None
    onnx.save(program.model_proto, str(path))
    return [node.op_type for node in program.model_proto.graph.node]


def test_export_with_fused_batchnorm_gets_the_re_export_note(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "fused.onnx"
    assert "BatchNormalization" not in _export(tiny_nets.build(), source)  # the default export fuses it
    ran = bnfold(capsys, "fold-and-export", "--model", source, "--out", tmp_path / "repo")
    assert ran.code == 0, ran.err
    assert EXPECTED_NOTE in ran.out
    manifest = json.loads((tmp_path / "repo" / "fused" / "model.json").read_text())
    assert manifest["fold_report"]["entries"] == []
    assert manifest["notes"] == [EXPECTED_NOTE.removeprefix("note: ")]


def test_re_export_as_advised_keeps_the_batchnorm_for_bnfold(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "kept.onnx"
    assert "BatchNormalization" in _export(tiny_nets.build(), source, optimize=False)
    ran = bnfold(capsys, "fold-and-export", "--model", source, "--out", tmp_path / "repo", "--json")
    assert ran.code == 0, ran.err
    report = json.loads((tmp_path / "repo" / "kept" / "model.json").read_text())["fold_report"]
    assert report["summary"] == "1/1 BatchNorm folded, 0 lowered, 0 kept"


def test_mul_add_maps_fold_and_are_reported_as_affine(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = tmp_path / "scaled.onnx"
    assert _export(ScaleShiftNet(seed=3).eval(), source, optimize=False).count("Mul") == 3
    ran = bnfold(capsys, "fold-and-export", "--model", source, "--out", tmp_path / "repo")
    assert ran.code == 0, ran.err
    entry = tmp_path / "repo" / "scaled"
    report = json.loads((entry / "model.json").read_text())["fold_report"]
    assert report["summary"] == "3/3 BatchNorm folded, 0 lowered, 0 kept (3 of the 3 are affine maps)"
    assert [e["kind"] for e in report["entries"]] == ["affine"] * 3
    assert all(len(e["sources"]) == 2 and e["max_error"] < 1e-5 for e in report["entries"])
    folded = onnx.load(str(entry / "folded.onnx"))
    assert [node.op_type for node in folded.graph.node].count("Mul") == 0


def test_tf2onnx_conversion_without_batchnorm_gets_the_tf2onnx_note(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What tf2onnx writes for Keras Conv2D-BN-ReLU: Transpose(NHWC→NCHW) → Conv (BN already in W, b) → Relu."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "W", "b"], ["z"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z"], ["y"]),
    ]
    image = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["unk__1", 8, 8, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["unk__1", 4, 8, 8])
    model = helper.make_model(helper.make_graph(nodes, "keras", [image], [y], weights), producer_name="tf2onnx")
    model.opset_import[0].version = 15
    source = tmp_path / "keras.onnx"
    onnx.save(model, str(source))
    ran = bnfold(capsys, "fold-and-export", "--model", source, "--out", tmp_path / "repo")
    assert ran.code == 0, ran.err
    assert TF2ONNX_NOTE in ran.out and EXPECTED_NOTE not in ran.out
    manifest = json.loads((tmp_path / "repo" / "keras" / "model.json").read_text())
    assert manifest["notes"] == [TF2ONNX_NOTE.removeprefix("note: ")]
