"""The model-repository extension against a real server: index, load (new, changed, broken, stuck), unload.

Entries are real ONNX models (tests/service/builders.py) written into the served directory while the server
runs; outputs are checked against the float64 numpy reference of the weights each entry was built from.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from bnfold.contract.hashing import sha256_file
from bnfold.service.settings import Settings
from tests.service.builders import Weights, reference_logits, write_entry
from tests.service.oracle import json_request
from tests.service.server import RunningServer, running_server

TOKEN = "control-token"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> tuple[Path, dict[str, Weights]]:
    root = tmp_path_factory.mktemp("served")
    return root, {name: write_entry(root, name, rng)[0] for name in ("digits", "other")}


@pytest.fixture(scope="module")
def server(repository: tuple[Path, dict[str, Weights]]) -> Iterator[RunningServer]:
    with running_server(Settings(repository=repository[0], equivalence_policy="off")) as running:
        yield running


def logits(server: RunningServer, model: str, x: np.ndarray, version: str | None = None) -> np.ndarray:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    response = server.client.post(path, json=json_request(x))
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["outputs"][0]["data"], np.float64).reshape(len(x), -1)


def index(server: RunningServer, **body: object) -> list[dict[str, str]]:
    response = server.client.post("/v2/repository/index", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def ready_entries(name: str) -> list[dict[str, str]]:
    return [{"name": name, "version": v, "state": "READY", "reason": ""} for v in ("folded", "unfolded")]


def replace_entry(root: Path, name: str, rng: np.random.Generator) -> Weights:
    """Export a new entry beside the served one, then swap the directories (what a re-export does)."""
    staging = root.parent / f"staging-{name}-{time.monotonic_ns()}"
    weights = write_entry(staging, name, rng)[0]
    shutil.rmtree(root / name)
    (staging / name).rename(root / name)
    return weights


def test_index_lists_every_version_of_every_model(server: RunningServer) -> None:
    entries = index(server)
    assert [e for e in entries if e["name"] in ("digits", "other")] == ready_entries("digits") + ready_entries("other")
    empty_body = server.client.post("/v2/repository/index")
    assert empty_body.status_code == 200 and empty_body.json() == entries
    assert all(entry["state"] == "READY" for entry in index(server, ready=True))
    bad = server.client.post("/v2/repository/index", json={"ready": "yes"})
    assert (bad.status_code, bad.json()) == (400, {"error": "'ready' must be true or false, got 'yes'"})


def test_a_model_exported_while_serving_loads_and_serves(
    server: RunningServer, repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator
) -> None:
    root = repository[0]
    weights = write_entry(root, "late", rng)[0]
    hint = "not loaded; load it with POST /v2/repository/models/late/load"
    listed = [e for e in index(server) if e["name"] == "late"]
    assert listed == [{"name": "late", "state": "UNAVAILABLE", "reason": hint}]
    before = server.client.post("/v2/models/late/infer", json=json_request(np.zeros((1, 1, 8, 8), np.float32)))
    assert before.status_code == 404 and before.json()["error"].startswith("unknown model 'late'; available models:")

    loaded = server.client.post("/v2/repository/models/late/load")
    assert (loaded.status_code, loaded.json()) == (200, {"name": "late", "state": "READY"})
    assert [e for e in index(server) if e["name"] == "late"] == ready_entries("late")
    x = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    for version in ("folded", "unfolded", None):
        np.testing.assert_allclose(logits(server, "late", x, version), reference_logits(weights, x), atol=1e-4)


def test_a_zoo_entry_copied_into_the_repository_loads(
    server: RunningServer, repository: tuple[Path, dict[str, Weights]], zoo_repository: Path
) -> None:
    """A real trained, folded and exported model: its folded version answers like its unfolded graph does
    when run by onnxruntime here, on the entry's own calibration inputs."""
    import onnxruntime as ort

    from bnfold.contract.calibration import read_calibration
    from bnfold.service.repository import read_manifest

    source = sorted(path for path in zoo_repository.iterdir() if path.is_dir())[0]
    shutil.copytree(source, repository[0] / source.name)
    assert server.client.post(f"/v2/repository/models/{source.name}/load").status_code == 200
    manifest = read_manifest(source)
    batch = read_calibration(source / manifest.calibration.file, manifest.inputs)
    expected = ort.InferenceSession(str(source / manifest.variants["unfolded"].file)).run(None, batch)[0]
    body = {
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": list(value.shape), "data": value.ravel().tolist()}
            for name, value in batch.items()
        ]
    }
    response = server.client.post(f"/v2/models/{source.name}/versions/folded/infer", json=body)
    assert response.status_code == 200, response.text
    served = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(expected.shape)
    tolerance = manifest.tolerance
    np.testing.assert_allclose(served, expected, atol=tolerance.atol + tolerance.rtol * np.abs(expected).max())


def test_a_broken_entry_is_refused_with_its_reason_while_the_rest_serve(
    server: RunningServer, repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator
) -> None:
    root, weights = repository
    _, manifest = write_entry(root, "broken", rng)
    folded = root / "broken" / "folded.onnx"
    folded.write_bytes(folded.read_bytes()[:100])
    reason = (
        f"sha256 of folded.onnx is {sha256_file(folded)[:16]}..., model.json says "
        f"{manifest['variants']['folded']['sha256'][:16]}...: the file was truncated or replaced; rebuild the entry"
    )
    refused = server.client.post("/v2/repository/models/broken/load")
    assert (refused.status_code, refused.json()) == (400, {"error": f"failed to load 'broken': {reason}"})
    assert [e for e in index(server) if e["name"] == "broken"] == [
        {"name": "broken", "state": "UNAVAILABLE", "reason": reason}
    ]
    infer = server.client.post("/v2/models/broken/infer", json=json_request(np.zeros((1, 1, 8, 8), np.float32)))
    assert (infer.status_code, infer.json()) == (503, {"error": f"model 'broken' is not ready: {reason}"})
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(logits(server, "digits", x), reference_logits(weights["digits"], x), atol=1e-4)

    missing = server.client.post("/v2/repository/models/nothing_here/load")
    assert missing.status_code == 400
    assert missing.json()["error"] == (
        f"failed to load 'nothing_here': no entry directory {str(root / 'nothing_here')!r} in the repository; "
        "export one there with bnfold fold-and-export"
    )
    overrides = server.client.post("/v2/repository/models/digits/load", json={"parameters": {"config": "{}"}})
    assert (overrides.status_code, overrides.json()) == (
        400,
        {"error": "bnfold loads entries from its repository directory only; drop the 'config' and 'file:' parameters"},
    )


def test_a_failed_reload_leaves_the_previous_entry_serving(
    server: RunningServer, repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator
) -> None:
    root = repository[0]
    weights = write_entry(root, "keeper", rng)[0]
    assert server.client.post("/v2/repository/models/keeper/load").status_code == 200
    manifest_file = root / "keeper" / "model.json"
    good = manifest_file.read_bytes()
    manifest_file.write_text('{"format": ')
    refused = server.client.post("/v2/repository/models/keeper/load")
    assert refused.status_code == 400
    message = refused.json()["error"]
    assert message.startswith(f"failed to load 'keeper': {manifest_file}: ")
    assert message.endswith("; the previously loaded entry keeps serving")
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(logits(server, "keeper", x), reference_logits(weights, x), atol=1e-4)
    failure = message.removeprefix("failed to load 'keeper': ")
    failure = failure.removesuffix("; the previously loaded entry keeps serving")
    reason = f"serving the previously loaded entry; the last load failed: {failure}"
    assert [e["reason"] for e in index(server) if e["name"] == "keeper"] == [reason, reason]
    manifest_file.write_bytes(good)
    assert server.client.post("/v2/repository/models/keeper/load").status_code == 200
    assert [e for e in index(server) if e["name"] == "keeper"] == ready_entries("keeper")


def test_a_changed_entry_is_swapped_in_while_requests_are_in_flight(
    server: RunningServer, repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator
) -> None:
    """Clients hammer the model being reloaded and another one; every request succeeds, each answer is the
    old or the new model's (the new one only once the load has returned), the other model is untouched."""
    root, weights = repository
    old = write_entry(root, "swapped", rng)[0]
    assert server.client.post("/v2/repository/models/swapped/load").status_code == 200
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    expected = {"swapped": reference_logits(old, x), "digits": reference_logits(weights["digits"], x)}
    stop, lock = threading.Event(), threading.Lock()
    answers: list[tuple[str, float, int, np.ndarray | None, float]] = []  # model, answered, status, logits, sent

    def client(model: str) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                sent = time.monotonic()
                response = http.post(f"/v2/models/{model}/infer", json=json_request(x))
                ok = response.status_code == 200
                data = np.asarray(response.json()["outputs"][0]["data"]).reshape(2, -1) if ok else None
                with lock:
                    answers.append((model, time.monotonic(), response.status_code, data, sent))

    digits_before = folded_successes(server, "digits")
    threads = [threading.Thread(target=client, args=(m,)) for m in ("swapped", "swapped", "digits", "digits")]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    new = replace_entry(root, "swapped", rng)
    load_started = time.monotonic()
    loaded = server.client.post("/v2/repository/models/swapped/load")
    load_ended = time.monotonic()
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    assert loaded.status_code == 200, loaded.text

    assert [answer[2] for answer in answers] == [200] * len(answers)
    # in flight: sent before the new model was swapped in, answered after its load began
    in_flight = {m: [a for a in answers if a[0] == m and a[4] < load_ended and a[1] > load_started] for m in expected}
    after = [a for a in answers if a[0] == "swapped" and a[4] > load_ended]
    assert in_flight["swapped"] and in_flight["digits"] and after, ({m: len(v) for m, v in in_flight.items()}, after)
    new_logits = reference_logits(new, x)
    for model, _, _, data, sent in answers:
        assert data is not None
        if model == "digits":
            np.testing.assert_allclose(data, expected["digits"], atol=1e-4)
        elif sent > load_ended:
            np.testing.assert_allclose(data, new_logits, atol=1e-4)
        else:
            assert np.allclose(data, expected["swapped"], atol=1e-4) or np.allclose(data, new_logits, atol=1e-4)
    digits_sent = sum(answer[0] == "digits" for answer in answers)
    assert folded_successes(server, "digits") == digits_before + digits_sent
    swapped_after = sum(answer[0] == "swapped" and answer[4] > load_ended for answer in answers)
    swapped_total = sum(answer[0] == "swapped" for answer in answers)
    # the new model counts from its load on: every request sent after it, none of those answered before it
    assert swapped_after <= folded_successes(server, "swapped") <= swapped_total


def folded_successes(server: RunningServer, model: str) -> int:
    stats = server.client.get(f"/v2/models/{model}/versions/folded/stats").json()["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def test_unload_then_infer_is_404_with_the_reason(
    server: RunningServer, repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator
) -> None:
    root = repository[0]
    weights = write_entry(root, "gone", rng)[0]
    assert server.client.post("/v2/repository/models/gone/load").status_code == 200
    unloaded = server.client.post("/v2/repository/models/gone/unload")
    assert (unloaded.status_code, unloaded.json()) == (200, {"name": "gone", "state": "UNAVAILABLE"})
    infer = server.client.post("/v2/models/gone/infer", json=json_request(np.zeros((1, 1, 8, 8), np.float32)))
    assert (infer.status_code, infer.json()) == (
        404,
        {
            "error": "model 'gone' has no available versions: unloaded by request; "
            "load it with POST /v2/repository/models/gone/load"
        },
    )
    assert server.client.get("/v2/models/gone/ready").status_code == 404
    assert [e for e in index(server) if e["name"] == "gone"] == [
        {"name": "gone", "state": "UNAVAILABLE", "reason": "unloaded by request"}
    ]
    assert server.client.post("/v2/repository/models/gone/unload").status_code == 200  # idempotent
    unknown = server.client.post("/v2/repository/models/never_was/unload")
    assert unknown.status_code == 404 and unknown.json()["error"].startswith("unknown model 'never_was'")
    assert server.client.post("/v2/repository/models/gone/load").status_code == 200
    x = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(logits(server, "gone", x), reference_logits(weights, x), atol=1e-4)


def test_tritonclient_http_model_control(
    server: RunningServer, repository: tuple[Path, dict[str, Weights]], rng: np.random.Generator
) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    root = repository[0]
    write_entry(root, "triton_ctl", rng)
    client = httpclient.InferenceServerClient(server.address)
    listed = client.get_model_repository_index()
    assert {"name": "triton_ctl", "state": "UNAVAILABLE", "reason": client_hint("triton_ctl")} in listed
    client.load_model("triton_ctl")
    assert client.is_model_ready("triton_ctl") and client.is_model_ready("triton_ctl", "unfolded")
    client.unload_model("triton_ctl")
    assert not client.is_model_ready("triton_ctl")
    (root / "triton_ctl" / "unfolded.onnx").unlink()
    with pytest.raises(InferenceServerException) as refused:
        client.load_model("triton_ctl")
    assert refused.value.message() == (
        "failed to load 'triton_ctl': unfolded.onnx is missing; rebuild the entry with bnfold fold-and-export"
    )


def client_hint(name: str) -> str:
    return f"not loaded; load it with POST /v2/repository/models/{name}/load"


def test_a_stuck_load_times_out_while_the_others_serve(
    tmp_path: Path, rng: np.random.Generator, repository: tuple[Path, dict[str, Weights]]
) -> None:
    """A 1 GiB sparse ONNX file takes seconds to hash: the load is abandoned at the timeout with that reason,
    and the model already served answers throughout."""
    weights = write_entry(tmp_path, "quick", rng)[0]
    settings = Settings(repository=tmp_path, equivalence_policy="off", load_timeout_seconds=0.3)
    with running_server(settings) as running:
        write_entry(tmp_path, "huge", rng)
        with (tmp_path / "huge" / "folded.onnx").open("r+b") as handle:
            handle.truncate(1 << 30)
        x = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
        answered: list[int] = []

        def keep_asking() -> None:
            with httpx.Client(base_url=running.url, timeout=30) as http:
                for _ in range(20):
                    answered.append(http.post("/v2/models/quick/infer", json=json_request(x)).status_code)

        asker = threading.Thread(target=keep_asking)
        asker.start()
        started = time.monotonic()
        refused = running.client.post("/v2/repository/models/huge/load")
        elapsed = time.monotonic() - started
        asker.join()
        reason = (
            "loading took longer than 0.3 s (--load-timeout-seconds); check the entry's files "
            "(size, a blocking file) or raise the timeout"
        )
        assert (refused.status_code, refused.json()) == (400, {"error": f"failed to load 'huge': {reason}"})
        assert elapsed < 2.0
        assert answered == [200] * 20
        assert [e for e in index(running) if e["name"] == "huge"] == [
            {"name": "huge", "state": "UNAVAILABLE", "reason": reason}
        ]
        np.testing.assert_allclose(logits(running, "quick", x), reference_logits(weights, x), atol=1e-4)


def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met within the timeout")


def test_polling_loads_new_and_changed_entries_and_unloads_removed_ones(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    root = tmp_path / "polled"
    root.mkdir()
    first = write_entry(root, "first", rng)[0]
    settings = Settings(repository=root, equivalence_policy="off", repository_poll_seconds=0.1)
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    with running_server(settings) as running:
        np.testing.assert_allclose(logits(running, "first", x), reference_logits(first, x), atol=1e-4)
        added = write_entry(root, "added", rng)[0]
        wait_for(lambda: running.client.get("/v2/models/added/ready").status_code == 200)
        np.testing.assert_allclose(logits(running, "added", x), reference_logits(added, x), atol=1e-4)

        changed = replace_entry(root, "first", rng)
        expected = reference_logits(changed, x)
        wait_for(lambda: np.allclose(logits(running, "first", x), expected, atol=1e-4))

        shutil.rmtree(root / "added")
        wait_for(lambda: running.client.get("/v2/models/added/ready").status_code == 404)
        gone = running.client.post("/v2/models/added/infer", json=json_request(x))
        assert gone.json() == {
            "error": "model 'added' has no available versions: removed from the repository; "
            "load it with POST /v2/repository/models/added/load"
        }
        assert [e["name"] for e in index(running)] == ["first", "first"]


def test_repository_routes_need_the_token(repository: tuple[Path, dict[str, Weights]]) -> None:
    settings = Settings(repository=repository[0], api_key=SecretStr(TOKEN))
    with running_server(settings) as running:
        for path in ("/v2/repository/index", "/v2/repository/models/digits/load", "/v2/repository/models/x/unload"):
            refused = running.client.post(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
        entries = running.client.post("/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"})
        assert entries.status_code == 200 and ready_entries("digits")[0] in entries.json()
