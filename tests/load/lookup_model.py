"""A repository entry whose model fails inside onnxruntime on some valid-looking inputs: an embedding lookup.

ids (N, 4) INT64 → Gather(table (10, 3)) → (N, 4, 3) → ReduceMean over axis 1 → logits (N, 3). Any id outside
[−10, 10) passes every input check (the datatype and shape are right) but makes onnxruntime's Gather fail, so
a merged batch containing it fails as a whole — the case the batcher's fall-back exists for. Samples are
independent, so merging valid requests is exact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCABULARY, WIDTH, CLASSES = 10, 4, 3


def lookup_graph(table: np.ndarray) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0),
        helper.make_node("ReduceMean", ["vectors"], ["logits"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", WIDTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(table.astype(np.float32), "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def reference(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float64 numpy reference of the lookup model."""
    return table.astype(np.float32).astype(np.float64)[ids].mean(axis=1)


def write_lookup_entry(repository: Path, name: str, rng: np.random.Generator) -> np.ndarray:
    """Write NAME/ (both variants the same graph, no BatchNorm); returns the embedding table."""
    table = rng.normal(size=(VOCABULARY, CLASSES))
    entry = repository / name
    entry.mkdir(parents=True)
    for variant in ("folded", "unfolded"):
        onnx.save(lookup_graph(table), entry / f"{variant}.onnx")
    np.savez(entry / "calibration.npz", ids=rng.integers(0, VOCABULARY, (8, WIDTH)).astype(np.int64))
    digest = {v: hashlib.sha256((entry / f"{v}.onnx").read_bytes()).hexdigest() for v in ("folded", "unfolded")}
    manifest = {
        "format": "bnfold-repository/1",
        "name": name,
        "task": "regression",
        "inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, WIDTH]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, CLASSES]}],
        "variants": {v: {"file": f"{v}.onnx", "sha256": digest[v], "batchnorm_nodes": 0} for v in digest},
        "tolerance": {"atol": 1e-6, "rtol": 1e-5},
        "calibration": {"file": "calibration.npz", "batch_size": 8},
        "fold_report": {"entries": [], "max_output_error": 0.0, "summary": "0/0 BatchNorm folded, 0 lowered, 0 kept"},
        "provenance": {"source": "tests:lookup", "weights_sha256": None, "created": "2026-11-25T02:00:00Z"},
        "metrics": {},
    }
    (entry / "model.json").write_text(json.dumps(manifest, indent=2))
    return table
