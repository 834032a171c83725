"""Bearer token on/off, the body limit (413), the batch limit (413) and the NaN/Inf setting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from bnfold.service.settings import Settings
from tests.service.builders import write_entry
from tests.service.oracle import binary_request, json_request
from tests.service.server import RunningServer, running_server

TOKEN = "s3cret-token"
UNAUTHORIZED = {"error": "missing or wrong bearer token; send the header 'Authorization: Bearer <BNFOLD_API_KEY>'"}
PUBLIC = ["/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready", "/v2/models/digits/versions/folded/ready"]
PROTECTED = ["/v2", "/v2/models", "/v2/models/digits", "/v2/models/digits/config", "/v2/models/digits/stats"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("single")
    write_entry(root, "digits", rng)
    return root


@pytest.fixture(scope="module")
def locked_server(repository: Path) -> Iterator[RunningServer]:
    settings = Settings(repository=repository, api_key=SecretStr(TOKEN), max_body_bytes=4096, max_batch_size=4)
    with running_server(settings) as running:
        yield running


def test_health_and_metrics_are_public(locked_server: RunningServer) -> None:
    for path in [*PUBLIC, "/metrics"]:
        assert locked_server.client.get(path).status_code == 200, path


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_everything_else_needs_the_token(locked_server: RunningServer, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    x = np.zeros((1, 1, 8, 8), np.float32)
    responses = [locked_server.client.get(path, headers=headers) for path in PROTECTED]
    responses.append(locked_server.client.post("/v2/models/digits/infer", json=json_request(x), headers=headers))
    responses.append(locked_server.client.post("/predict", json={"model": "digits", "inputs": x.tolist()}))
    for response in responses:
        assert (response.status_code, response.json()) == (401, UNAUTHORIZED), response.request.url
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_token_opens_everything(locked_server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for path in PROTECTED:
        assert locked_server.client.get(path, headers=headers).status_code == 200, path
    x = np.zeros((2, 1, 8, 8), np.float32)
    infer = locked_server.client.post("/v2/models/digits/infer", json=json_request(x), headers=headers)
    assert infer.status_code == 200 and infer.json()["outputs"][0]["shape"] == [2, 3]


def test_body_over_the_limit_is_413(locked_server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = locked_server.client.post("/v2/models/digits/infer", content=b" " * 5000, headers=headers)
    assert (response.status_code, response.json()) == (
        413,
        {
            "error": "request body of 5000 bytes or more is over the limit of 4096 bytes; send a smaller batch "
            "or raise BNFOLD_MAX_BODY_BYTES"
        },
    )
    chunked = locked_server.client.post(
        "/v2/models/digits/infer", content=iter([b" " * 3000, b" " * 3000]), headers=headers
    )
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert chunked.status_code == 413
    assert chunked.json()["error"] == response.json()["error"].replace("5000", "6000")
    assert locked_server.client.get("/v2/health/ready").status_code == 200


def test_batch_over_the_limit_is_413(locked_server: RunningServer) -> None:
    body, headers = binary_request(np.zeros((5, 1, 8, 8), np.float32))
    response = locked_server.client.post(
        "/v2/models/digits/infer", content=body, headers={**headers, "Authorization": f"Bearer {TOKEN}"}
    )
    assert (response.status_code, response.json()) == (
        413,
        {"error": "batch of 5 is over the limit of 4; split the request or raise BNFOLD_MAX_BATCH_SIZE"},
    )


def test_open_server_and_non_finite_allowed(repository: Path) -> None:
    with running_server(Settings(repository=repository, allow_non_finite=True)) as running:
        for path in PROTECTED:
            assert running.client.get(path).status_code == 200, path
        x = np.zeros((1, 1, 8, 8), np.float32)
        x[0, 0, 0, 0] = np.nan
        body = json.dumps(json_request(x)).encode()  # Python's json writes NaN, as many clients do
        path = "/v2/models/digits/versions/unfolded/infer"
        response = running.client.post(path, content=body)  # NaN spreads through the global pool to every logit
        assert response.status_code == 422  # strict JSON cannot carry the NaN output, so it is a 422
        assert response.json()["error"].startswith("output 'logits' holds nan (first at flat index 0)")
        binary = json.dumps(json_request(x, parameters={"binary_data_output": True})).encode()
        response = running.client.post(path, content=binary)
        assert response.status_code == 200
        length = int(response.headers["inference-header-content-length"])
        assert np.isnan(np.frombuffer(response.content[length:], np.float32)).all()


def test_server_is_live_before_it_is_ready(repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading runs in the lifespan without blocking: live at once, ready (and models served) when it ends."""
    import threading

    from bnfold.service import app as service_app

    gate = threading.Event()
    original = service_app.load_all

    def slow_load_all(*args: object) -> None:
        gate.wait(10)
        original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(service_app, "load_all", slow_load_all)
    with running_server(Settings(repository=repository), wait_ready=False) as running:
        assert running.client.get("/v2/health/live").status_code == 200
        not_ready = running.client.get("/v2/health/ready")
        assert (not_ready.status_code, not_ready.json()) == (
            503,
            {"error": "server is still loading models; retry shortly"},
        )
        loading = running.client.post("/v2/models/digits/infer", json=json_request(np.zeros((1, 1, 8, 8), np.float32)))
        assert loading.status_code == 503
        assert loading.json()["error"] == "model 'digits' is still loading; retry when /v2/health/ready is 200"
        gate.set()
        for _ in range(500):
            if running.client.get("/v2/health/ready").status_code == 200:
                break
            threading.Event().wait(0.01)
        assert running.client.get("/v2/models/digits/ready").status_code == 200


def test_unknown_token_scheme_is_not_a_crash(locked_server: RunningServer) -> None:
    response = httpx.get(f"{locked_server.url}/v2", headers={"Authorization": "Bearer"})
    assert response.status_code == 401


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_api_key_means_no_auth_not_an_empty_token(repository: Path, key: str) -> None:
    assert Settings(repository=repository, api_key=SecretStr(key)).api_key is None
    assert Settings(repository=repository, api_key=SecretStr(TOKEN)).api_key == SecretStr(TOKEN)
