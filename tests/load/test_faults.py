"""Faults not covered by tests/service (which has truncated, missing, malformed-JSON, invalid-ONNX and tampered
entries): a model.json that is valid JSON but breaks the contract, a missing calibration file, an empty ONNX
file, a model directory removed while serving, and SIGTERM with requests in flight."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bnfold.service.settings import Settings
from tests.load.concurrent import post_concurrently
from tests.load.serve_process import serve_process
from tests.service.builders import reference_logits, write_entry
from tests.service.oracle import json_request
from tests.service.server import running_server

REASONS = {
    "wrong_datatype": "model.json is invalid at inputs.0.datatype: ",
    "renamed": "model.json name 'someone_else' differs from its directory 'renamed'",
    "no_calibration": "calibration file calibration.npz is missing; rebuild the entry",
    "empty_onnx": "sha256 of folded.onnx is e3b0c44298fc1c14..., model.json says ",
}


def build_faulty(root: Path, rng: np.random.Generator) -> dict:
    weights = {"healthy": write_entry(root, "healthy", rng)[0]}
    for name in REASONS:
        write_entry(root, name, rng)
    _edit_manifest(root / "wrong_datatype", lambda m: m["inputs"][0].update(datatype="FP99"))
    _edit_manifest(root / "renamed", lambda m: m.update(name="someone_else"))
    (root / "no_calibration" / "calibration.npz").unlink()
    (root / "empty_onnx" / "folded.onnx").write_bytes(b"")
    return weights


def _edit_manifest(entry: Path, edit: object) -> None:
    manifest = json.loads((entry / "model.json").read_text())
    edit(manifest)  # type: ignore[operator]
    (entry / "model.json").write_text(json.dumps(manifest))


def test_each_fault_is_reported_and_the_healthy_model_serves(tmp_path: Path, rng: np.random.Generator) -> None:
    weights = build_faulty(tmp_path, rng)
    with running_server(Settings(repository=tmp_path, equivalence_policy="always")) as server:
        states = {m["name"]: m for m in server.client.get("/v2/models").json()["models"]}
        for name, reason in REASONS.items():
            assert states[name]["state"] == "unavailable"
            assert states[name]["reason"].startswith(reason) or reason in states[name]["reason"], states[name]
            response = server.client.post(f"/v2/models/{name}/infer", json=json_request(np.zeros((1, 1, 8, 8))))
            assert response.status_code == 503
            assert response.json() == {"error": f"model {name!r} is not ready: {states[name]['reason']}"}
        x = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
        body = server.client.post("/v2/models/healthy/infer", json=json_request(x)).json()
        got = np.reshape(body["outputs"][0]["data"], (3, 3))
        np.testing.assert_allclose(got, reference_logits(weights["healthy"], x), rtol=1e-4, atol=1e-5)


def test_directory_removed_while_serving_keeps_serving_what_was_loaded(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Decision: sessions live in memory and files are read only at load, so removing an entry's directory
    changes nothing until a restart (which then no longer lists it)."""
    weights = write_entry(tmp_path, "digits", rng)[0]
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    with running_server(Settings(repository=tmp_path, equivalence_policy="always")) as server:
        shutil.rmtree(tmp_path / "digits")
        for path in ("/v2/models/digits/infer", "/v2/models/digits/versions/unfolded/infer"):
            response = server.client.post(path, json=json_request(x))
            assert response.status_code == 200, response.text
            got = np.reshape(response.json()["outputs"][0]["data"], (2, 3))
            np.testing.assert_allclose(got, reference_logits(weights, x), rtol=1e-4, atol=1e-5)
        assert server.client.get("/v2/models/digits/ready").status_code == 200
    with running_server(Settings(repository=tmp_path)) as restarted:
        assert restarted.client.get("/v2/models").json() == {"models": []}


@pytest.mark.timeout(90)
def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, rng: np.random.Generator) -> None:
    """Requests held ~1.5 s by the batcher's delay window are in flight when SIGTERM arrives; each still gets
    its correct answer, then `bnfold serve` exits (status: the re-raised SIGTERM)."""
    weights = write_entry(tmp_path, "digits", rng)[0]
    inputs = [rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32) for _ in range(6)]
    with serve_process(tmp_path, max_batch_delay_ms="1000", equivalence_policy="off") as server:
        results: list = []
        sender = threading.Thread(
            target=lambda: results.extend(
                post_concurrently(server.url, "/v2/models/digits/infer", [json_request(x) for x in inputs])
            )
        )
        sender.start()
        time.sleep(0.4)
        assert not results and server.process.poll() is None  # the requests are waiting in the batch window
        server.process.send_signal(signal.SIGTERM)
        sender.join(timeout=30)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: the exit status is SIGTERM's.
        assert server.process.wait(timeout=30) == -signal.SIGTERM
        stderr = server.process.stderr.read().decode() if server.process.stderr else ""
    assert len(results) == len(inputs), stderr
    for x, response in zip(inputs, results, strict=True):
        assert response.status_code == 200, response.text
        got = np.reshape(response.json()["outputs"][0]["data"], (1, 3))
        np.testing.assert_allclose(got, reference_logits(weights, x), rtol=1e-4, atol=1e-5)
