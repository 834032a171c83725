"""End-to-end: a real uvicorn server on the mixed repository; numbers compared with onnxruntime run directly
on the repository files and with a float64 numpy reference of the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.service.builders import Weights, reference_logits
from tests.service.oracle import binary_request, json_request, parse_binary_response, run_directly
from tests.service.server import RunningServer

REASONS = {
    "tampered": "folded and unfolded disagree on the calibration batch: output 'logits': max |Δ| = ",
    "truncated": "sha256 of folded.onnx is ",
    "missing_file": "unfolded.onnx is missing; rebuild the entry with bnfold fold-and-export",
    "bad_json": "is not valid JSON (",
    "invalid_onnx": "onnxruntime cannot load folded.onnx: ",
}


def batch(rng: np.random.Generator, n: int = 5) -> np.ndarray:
    return rng.uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32)


def test_server_metadata_and_health(server: RunningServer) -> None:
    assert server.client.get("/v2/health/live").json() == {"live": True}
    assert server.client.get("/v2/health/ready").json() == {"ready": True}
    assert server.client.get("/v2").json() == {
        "name": "bnfold",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }


def test_broken_entries_are_not_ready_with_reason_and_others_serve(server: RunningServer) -> None:
    states = {m["name"]: m for m in server.client.get("/v2/models").json()["models"]}
    assert {name for name, m in states.items() if m["state"] == "ready"} == {"digits", "regressor"}
    for name, reason in REASONS.items():
        assert states[name]["state"] == "unavailable"
        assert reason in states[name]["reason"], states[name]["reason"]
        ready = server.client.get(f"/v2/models/{name}/ready")
        assert ready.status_code == 503
        assert ready.json() == {"error": f"model {name!r} is not ready: {states[name]['reason']}"}
        metadata = server.client.get(f"/v2/models/{name}").json()
        assert (metadata["state"], metadata["reason"]) == ("unavailable", states[name]["reason"])
    assert server.client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert "truncated or replaced" in states["truncated"]["reason"]


def test_json_infer_matches_onnxruntime_and_reference(
    server: RunningServer, mixed_repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator
) -> None:
    root, weights = mixed_repository
    x = batch(rng)
    response = server.client.post("/v2/models/digits/infer", json=json_request(x, id="req-1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("digits", "folded", "req-1")
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [5, 3])
    logits = np.asarray(output["data"], dtype=np.float32).reshape(5, 3)
    np.testing.assert_allclose(logits, run_directly(root / "digits", "folded", x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, reference_logits(weights["digits"], x), rtol=1e-4, atol=1e-5)
    parameters = body["parameters"]
    assert parameters["bnfold_equivalence_checked"] is True
    assert parameters["bnfold_within_tolerance"] is True and parameters["bnfold_argmax_agree"] is True
    unfolded = run_directly(root / "digits", "unfolded", x)
    assert parameters["bnfold_max_abs_diff"] == pytest.approx(float(np.abs(logits - unfolded).max()), abs=1e-6)


@pytest.mark.parametrize("version", ["folded", "unfolded"])
def test_versioned_binary_infer_matches_onnxruntime(
    server: RunningServer, mixed_repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator, version: str
) -> None:
    root, _ = mixed_repository
    x = batch(rng, 7)
    body, headers = binary_request(x, parameters={"binary_data_output": True}, id="bin")
    response = server.client.post(f"/v2/models/digits/versions/{version}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    document, arrays = parse_binary_response(response.content, length)
    assert document["outputs"][0]["parameters"] == {"binary_data_size": 7 * 3 * 4}
    assert "data" not in document["outputs"][0]
    assert (document["model_version"], document["parameters"]["bnfold_equivalence_checked"]) == (version, False)
    np.testing.assert_allclose(arrays["logits"], run_directly(root / "digits", version, x), rtol=1e-5, atol=1e-6)


def test_binary_input_with_json_output_and_nested_data(
    server: RunningServer, mixed_repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator
) -> None:
    root, _ = mixed_repository
    x = batch(rng, 3)
    body, headers = binary_request(x, outputs=[{"name": "logits", "parameters": {"binary_data": False}}])
    response = server.client.post("/v2/models/regressor/infer", content=body, headers=headers)
    assert "inference-header-content-length" not in response.headers
    logits = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 3)
    expected = run_directly(root / "regressor", "folded", x)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    nested = server.client.post("/v2/models/regressor/infer", json=json_request(x, nested=True))
    np.testing.assert_allclose(nested.json()["outputs"][0]["data"], expected.reshape(-1), rtol=1e-5, atol=1e-6)
    assert "bnfold_argmax_agree" not in nested.json()["parameters"]  # regression: no arg-max check


def test_model_metadata_config_and_versions(server: RunningServer) -> None:
    metadata = server.client.get("/v2/models/digits").json()
    assert metadata["versions"] == ["folded", "unfolded"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    options = metadata["variants"]["unfolded"]["session_options"]
    assert options["graph_optimization"] == "disable" and options["provider"] == "CPUExecutionProvider"
    assert options["execution_mode"] == "sequential" and options["intra_op_threads"] >= 1
    assert metadata["variants"]["folded"]["session_options"]["graph_optimization"] == "all"
    assert metadata["calibration"]["within_tolerance"] is True
    assert server.client.get("/v2/models/digits/versions/unfolded").json() == metadata
    config = server.client.get("/v2/models/digits/config").json()
    assert config["max_batch_size"] == 1024
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]


def test_predict_variants(
    server: RunningServer, mixed_repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator
) -> None:
    root, _ = mixed_repository
    x = batch(rng, 2)
    for variant in ("folded", "unfolded", "both"):
        response = server.client.post("/predict", json={"model": "digits", "inputs": x.tolist(), "variant": variant})
        assert response.status_code == 200, response.text
        body = response.json()
        used = "folded" if variant == "both" else variant
        assert body["variant"] == used
        expected = run_directly(root / "digits", used, x)
        np.testing.assert_allclose(body["outputs"]["logits"], expected, rtol=1e-5, atol=1e-6)
        timed = {"folded", "unfolded"} if variant == "both" else {variant}
        assert set(body["timings_ms"]) == timed
        assert (body["equivalence"] is not None) == (variant == "both")
    both = server.client.post("/predict", json={"model": "digits", "inputs": {"input": x.tolist()}, "variant": "both"})
    assert both.json()["equivalence"]["agree"] is True
    for variant in ("folded", "unfolded"):  # "both" also returns each variant's outputs
        expected = run_directly(root / "digits", variant, x)
        np.testing.assert_allclose(both.json()[f"{variant}_outputs"]["logits"], expected, rtol=1e-5, atol=1e-6)


def test_stats_count_the_checks(server: RunningServer, rng: np.random.Generator) -> None:
    before = server.client.get("/v2/models/digits/stats").json()["equivalence"]["checks"]
    for _ in range(3):
        server.client.post("/v2/models/digits/infer", json=json_request(batch(rng, 1)))
    server.client.post("/v2/models/digits/versions/folded/infer", json=json_request(batch(rng, 1)))
    stats = server.client.get("/v2/models/digits/stats").json()
    assert stats["equivalence"]["checks"] == before + 3  # versioned requests are not checked
    assert stats["equivalence"]["mismatches"] == 0 and stats["equivalence"]["agreement_rate"] == 1.0
    assert 0 < stats["equivalence"]["max_abs_diff_seen"] < 1e-5
