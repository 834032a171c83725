"""An inference case taken from a built repository, with its expected outputs computed independently:
onnxruntime run directly on the entry's unfolded.onnx with every graph optimisation off (no fusion of
Conv+BatchNorm), in this test process, never through the service."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

V2_TO_NUMPY = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}


@dataclass
class InferenceCase:
    """A V2 request for one model of the repository and the outputs it must produce."""

    model: str
    request: dict[str, Any]
    expected: dict[str, NDArray[Any]]
    atol: float
    rtol: float

    def check(self, response: dict[str, Any]) -> None:
        """Every expected output is in `response` with its shape and within max|Δ| ≤ atol + rtol·max|ref|."""
        outputs = {output["name"]: output for output in response["outputs"]}
        assert set(outputs) == set(self.expected)
        for name, reference in self.expected.items():
            served = np.asarray(outputs[name]["data"], dtype=np.float64).reshape(outputs[name]["shape"])
            assert served.shape == reference.shape
            error = float(np.max(np.abs(served - reference)))
            assert error <= self.atol + self.rtol * float(np.max(np.abs(reference))), f"{name}: max|Δ| {error}"


def batchnorm_nodes(path: Path) -> int:
    """BatchNormalization nodes in the main graph of the ONNX file at `path`."""
    return sum(node.op_type == "BatchNormalization" for node in onnx.load(str(path)).graph.node)


def _run_unfolded(model: Path, inputs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, (np.asarray(value, dtype=np.float64) for value in session.run(names, inputs)), strict=True))


def inference_case(repository: Path, batch: int = 4) -> InferenceCase:
    """A case for the repository's smallest model: the first `batch` calibration samples as JSON tensors."""
    entry = min(
        (path.parent for path in repository.glob("*/model.json")), key=lambda e: (e / "folded.onnx").stat().st_size
    )
    manifest = json.loads((entry / "model.json").read_text())
    with np.load(entry / manifest["calibration"]["file"], allow_pickle=False) as calibration:
        inputs = {spec["name"]: np.ascontiguousarray(calibration[spec["name"]][:batch]) for spec in manifest["inputs"]}
    tensors = [
        {"name": spec["name"], "datatype": spec["datatype"], "shape": list(inputs[spec["name"]].shape),
         "data": inputs[spec["name"]].astype(V2_TO_NUMPY[spec["datatype"]]).reshape(-1).tolist()}
        for spec in manifest["inputs"]
    ]  # fmt: skip
    tolerance = manifest["tolerance"]
    expected = _run_unfolded(entry / manifest["variants"]["unfolded"]["file"], inputs)
    return InferenceCase(manifest["name"], {"inputs": tensors}, expected, tolerance["atol"], tolerance["rtol"])
