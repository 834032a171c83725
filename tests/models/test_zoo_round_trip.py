"""Round trip: zoo model → repository → onnxruntime outputs equal to PyTorch; accuracy targets met."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bnfold.models.zoo.catalog import ZOO, trained
from bnfold.models.zoo.data import load_split

CLASSIFIERS = [name for name, spec in ZOO.items() if spec.task == "classification"]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _batchnorm_modules(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _bn_nodes(path: Path) -> int:
    return sum(node.op_type == "BatchNormalization" for node in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("name", list(ZOO))
def test_entry_files_and_manifest(zoo_repository: Path, name: str) -> None:
    entry = zoo_repository / name
    manifest = json.loads((entry / "model.json").read_text())
    assert sorted(p.name for p in entry.iterdir()) == ["calibration.npz", "folded.onnx", "model.json", "unfolded.onnx"]
    assert manifest["format"] == "bnfold-repository/1" and manifest["name"] == name
    assert manifest["inputs"][0]["shape"][0] == -1 and manifest["outputs"][0]["shape"][0] == -1
    for variant in ("unfolded", "folded"):
        described = manifest["variants"][variant]
        assert hashlib.sha256((entry / described["file"]).read_bytes()).hexdigest() == described["sha256"]
        assert _bn_nodes(entry / described["file"]) == described["batchnorm_nodes"]
    assert manifest["provenance"]["source"] == f"zoo:{name}"
    assert len(manifest["provenance"]["weights_sha256"]) == 64
    assert not [p for p in zoo_repository.iterdir() if p.name.startswith(".")], "temporary directory left behind"


@pytest.mark.parametrize("name", list(ZOO))
def test_onnx_variants_equal_pytorch_on_held_out_data(zoo_repository: Path, zoo_cache_dir: Path, name: str) -> None:
    """Both ONNX files, run with ORT_DISABLE_ALL on the whole test split, match the trained PyTorch net."""
    model = trained(name, cache_dir=zoo_cache_dir)
    assert model.from_cache, "the fixture trained the zoo into this cache; it must be reused"
    x = load_split(ZOO[name].dataset).x_test
    with torch.no_grad():
        expected = model.model(torch.from_numpy(x)).numpy()
    entry = zoo_repository / name
    bn_total = _batchnorm_modules(model.model)
    assert bn_total >= 3
    assert _bn_nodes(entry / "unfolded.onnx") == bn_total
    assert _bn_nodes(entry / "folded.onnx") == 0
    for variant in ("unfolded", "folded"):
        session = _session(entry / f"{variant}.onnx")
        (got,) = session.run(None, {session.get_inputs()[0].name: x})
        error = np.max(np.abs(got.astype(np.float64) - expected))
        assert error <= 1e-6 + 1e-5 * np.max(np.abs(expected)), f"{variant}: max |Δ| {error:.3e}"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_folded_onnx_meets_the_accuracy_target(zoo_repository: Path, name: str) -> None:
    split = load_split(ZOO[name].dataset)
    session = _session(zoo_repository / name / "folded.onnx")
    (logits,) = session.run(None, {session.get_inputs()[0].name: split.x_test})
    accuracy = float(np.mean(logits.argmax(axis=1) == split.y_test))
    target = 0.97 if ZOO[name].dataset == "digits" else 0.95
    assert accuracy >= target
    recorded = json.loads((zoo_repository / name / "model.json").read_text())["metrics"]["test_accuracy"]
    assert accuracy == pytest.approx(recorded, abs=1e-6)


def test_autoencoder_reconstructs(zoo_repository: Path) -> None:
    """The reconstruction error is far below that of predicting the mean image."""
    split = load_split("digits")
    session = _session(zoo_repository / "digits_autoencoder" / "folded.onnx")
    (reconstruction,) = session.run(None, {"input": split.x_test})
    mse = float(np.mean((reconstruction - split.x_test) ** 2))
    baseline = float(np.mean((split.x_train.mean(axis=0) - split.x_test) ** 2))
    assert mse < 0.25 * baseline
    recorded = json.loads((zoo_repository / "digits_autoencoder" / "model.json").read_text())["metrics"]
    assert mse == pytest.approx(recorded["reconstruction_mse"], rel=1e-3)
