"""Input that passes every check but makes onnxruntime fail is a logged 500 in the error format, not a crash;
an empty batch is refused before it reaches onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.service.settings import Settings
from tests.service.builders import manifest_for
from tests.service.oracle import json_request
from tests.service.server import running_server


def fragile_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """Dynamic batch that gathers sample 7: batches of 8 or more run, smaller ones fail inside onnxruntime."""
    inits = [
        numpy_helper.from_array(np.array([7], np.int64), "seventh"),
        numpy_helper.from_array(rng.normal(size=(64, 3)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Gather", ["input", "seventh"], ["sample"], axis=0),  # (1, 1, 8, 8)
        helper.make_node("Add", ["input", "sample"], ["shifted"]),  # (N, 1, 8, 8)
        helper.make_node("Flatten", ["shifted"], ["flat"]),  # (N, 64)
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),  # (N, 3)
    ]
    graph = helper.make_graph(
        nodes,
        "fragile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("fragile")
    entry = root / "fragile"
    entry.mkdir()
    model = fragile_graph(rng)
    onnx.save(model, entry / "unfolded.onnx")
    onnx.save(model, entry / "folded.onnx")
    np.savez(entry / "calibration.npz", input=rng.uniform(-1, 1, (8, 1, 8, 8)).astype(np.float32))
    (entry / "model.json").write_text(json.dumps(manifest_for("fragile", "regression", entry)))
    return root


def test_onnxruntime_failure_is_a_500_in_the_error_format(repository: Path, rng: np.random.Generator) -> None:
    with running_server(Settings(repository=repository, equivalence_policy="off")) as running:
        ok = running.client.post("/v2/models/fragile/infer", json=json_request(np.ones((8, 1, 8, 8), np.float32)))
        assert ok.status_code == 200
        failed = running.client.post("/v2/models/fragile/infer", json=json_request(np.ones((2, 1, 8, 8), np.float32)))
        assert failed.status_code == 500
        assert failed.json()["error"].startswith("onnxruntime failed on model 'fragile' (folded): ")
        assert set(failed.json()) == {"error"}
        empty = running.client.post("/v2/models/fragile/infer", json=json_request(np.ones((0, 1, 8, 8), np.float32)))
        assert (empty.status_code, empty.json()) == (
            400,
            {"error": "inputs have batch size 0; send at least one sample"},
        )
        assert running.client.get("/v2/health/ready").status_code == 200
