"""End-to-end on the real zoo repository (`zoo_repository`, built by bnfold build-default's code path):
every trained model ready, numbers equal to onnxruntime run directly on the files (JSON, binary and the
reference client), and a tampered folded model with a valid digest refused by the equivalence gate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from onnx import numpy_helper

from bnfold.service.settings import Settings
from tests.service.conftest import rewrite_sha
from tests.service.oracle import parse_binary_response
from tests.service.server import RunningServer, running_server

pytestmark = pytest.mark.slow


def manifests(repository: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(repository.glob("*/model.json"))}


def direct(entry: Path, variant: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(entry / f"{variant}.onnx"), options, providers=["CPUExecutionProvider"])
    return [np.asarray(value) for value in session.run(None, inputs)]


def assert_agrees(actual: np.ndarray, expected: np.ndarray, tolerance: dict[str, float]) -> None:
    """The repository contract's rule: max|a − b| ≤ atol + rtol · max|b|."""
    error = float(np.abs(actual.astype(np.float64) - expected).max())
    bound = tolerance["atol"] + tolerance["rtol"] * float(np.abs(expected).max())
    assert error <= bound, f"max |Δ| {error:.3e} > {bound:.3e}"


def sample_inputs(entry: Path, manifest: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Five calibration rows, perturbed, so the requests are not the calibration batch itself."""
    with np.load(entry / "calibration.npz") as archive:
        return {
            spec["name"]: (archive[spec["name"]][:5] + rng.normal(0, 0.05, archive[spec["name"]][:5].shape)).astype(
                np.float32
            )
            for spec in manifest["inputs"]
        }


@pytest.fixture(scope="module")
def zoo_server(zoo_repository: Path) -> Iterator[RunningServer]:
    with running_server(Settings(repository=zoo_repository, equivalence_policy="always")) as running:
        yield running


def test_every_zoo_model_is_ready_with_batchnorm_where_expected(
    zoo_server: RunningServer, zoo_repository: Path
) -> None:
    found = manifests(zoo_repository)
    assert len(found) >= 4
    for name, manifest in found.items():
        metadata = zoo_server.client.get(f"/v2/models/{name}").json()
        assert (metadata["state"], metadata["reason"]) == ("ready", None), name
        assert metadata["inputs"] == manifest["inputs"] and metadata["outputs"] == manifest["outputs"]
        assert metadata["variants"]["unfolded"]["session_options"]["graph_optimization"] == "disable"
        for variant, expected in (("unfolded", manifest["variants"]["unfolded"]["batchnorm_nodes"]), ("folded", 0)):
            graph = onnx.load(zoo_repository / name / f"{variant}.onnx").graph
            assert sum(node.op_type == "BatchNormalization" for node in graph.node) == expected, (name, variant)
        assert manifest["variants"]["unfolded"]["batchnorm_nodes"] > 0


def test_zoo_json_and_binary_requests_match_onnxruntime(
    zoo_server: RunningServer, zoo_repository: Path, rng: np.random.Generator
) -> None:
    for name, manifest in manifests(zoo_repository).items():
        entry, tolerance = zoo_repository / name, manifest["tolerance"]
        inputs = sample_inputs(entry, manifest, rng)
        items = [
            {"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.reshape(-1).tolist()}
            for k, v in inputs.items()
        ]
        body = zoo_server.client.post(f"/v2/models/{name}/infer", json={"inputs": items}).json()
        assert body["parameters"]["bnfold_agree"] is True, (name, body["parameters"])
        for output, expected in zip(body["outputs"], direct(entry, "folded", inputs), strict=True):
            assert_agrees(np.reshape(output["data"], output["shape"]), expected, tolerance)
        request = {"inputs": items, "parameters": {"binary_data_output": True}}
        binary = zoo_server.client.post(f"/v2/models/{name}/versions/unfolded/infer", json=request)
        _, arrays = parse_binary_response(binary.content, int(binary.headers["inference-header-content-length"]))
        for spec, expected in zip(manifest["outputs"], direct(entry, "unfolded", inputs), strict=True):
            assert_agrees(arrays[spec["name"]], expected, tolerance)


def test_zoo_with_the_reference_client(
    zoo_server: RunningServer, zoo_repository: Path, rng: np.random.Generator
) -> None:
    client = triton.InferenceServerClient(zoo_server.address)
    for name, manifest in manifests(zoo_repository).items():
        assert client.is_model_ready(name)
        inputs = sample_inputs(zoo_repository / name, manifest, rng)
        tensors = []
        for key, value in inputs.items():
            tensor = triton.InferInput(key, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        result = client.infer(name, tensors)
        for spec, expected in zip(manifest["outputs"], direct(zoo_repository / name, "folded", inputs), strict=True):
            assert_agrees(result.as_numpy(spec["name"]), expected, manifest["tolerance"])


def scale_first_weight(path: Path, factor: float) -> str:
    """Multiply the first multi-element float initializer of an ONNX file by `factor`; returns its name."""
    model = onnx.load(path)
    for initializer in model.graph.initializer:
        array = numpy_helper.to_array(initializer)
        if array.dtype == np.float32 and array.size > 1:
            initializer.CopyFrom(numpy_helper.from_array(array * np.float32(factor), initializer.name))
            onnx.save(model, path)
            return initializer.name
    raise AssertionError(f"{path} has no float initializer")


def test_tampered_zoo_model_is_refused_and_the_others_serve(zoo_repository_copy: Path) -> None:
    scale_first_weight(zoo_repository_copy / "digits_resnet" / "folded.onnx", 1.05)
    rewrite_sha(zoo_repository_copy / "digits_resnet", "folded")  # the digest is right: only the gate can tell
    with running_server(Settings(repository=zoo_repository_copy)) as running:
        states = {m["name"]: m for m in running.client.get("/v2/models").json()["models"]}
        assert states["digits_resnet"]["state"] == "unavailable"
        assert states["digits_resnet"]["reason"].startswith("folded and unfolded disagree on the calibration batch")
        assert running.client.get("/v2/models/digits_resnet/ready").status_code == 503
        others = [name for name in states if name != "digits_resnet"]
        assert others and all(states[name]["state"] == "ready" for name in others)
