"""The HTTP edge refuses ambiguous requests alike on every route and says nothing in public beyond ready or not.

Against a real uvicorn server: duplicated output or input names are a 400 naming the name (a response is never
larger than what the model computed); several Authorization headers are one and the same 401 on the fast infer
path and on the FastAPI routes; without the token a model's ready route lists no other model and shows no
reason (file names, paths, digests), which the token unlocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from bnfold.service.settings import Settings
from tests.service.conftest import build_mixed_repository
from tests.service.oracle import binary_request, json_request
from tests.service.server import RunningServer, running_server

TOKEN = "edge-token"
SEVERAL = {"error": "several Authorization headers; send exactly one 'Authorization: Bearer <BNFOLD_API_KEY>'"}
NOT_READY = "is not ready; the reason is shown with the bearer token and in the server log"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("edge")
    build_mixed_repository(root, rng)
    return root


@pytest.fixture(scope="module")
def locked(repository: Path) -> Iterator[RunningServer]:
    with running_server(Settings(repository=repository, api_key=SecretStr(TOKEN))) as running:
        yield running


def test_duplicate_output_names_are_a_400_in_json_and_binary(locked: RunningServer, rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    twice = [{"name": "logits"}] * 2000
    expected = (400, {"error": "output 'logits' is asked for twice; ask for each output once"})
    response = locked.client.post("/v2/models/digits/infer", json=json_request(x, outputs=twice), headers=headers)
    assert (response.status_code, response.json()) == expected
    body, binary_headers = binary_request(x, outputs=[{"name": "logits", "parameters": {"binary_data": True}}] * 2000)
    response = locked.client.post("/v2/models/digits/infer", content=body, headers={**headers, **binary_headers})
    assert (response.status_code, response.json()) == expected
    once = locked.client.post("/v2/models/digits/infer", json=json_request(x, outputs=twice[:1]), headers=headers)
    assert once.status_code == 200 and [o["name"] for o in once.json()["outputs"]] == ["logits"]


def test_duplicate_input_names_are_a_400(locked: RunningServer, rng: np.random.Generator) -> None:
    x = rng.normal(size=(1, 1, 8, 8)).astype(np.float32)
    request = json_request(x)
    request["inputs"] = request["inputs"] * 3
    response = locked.client.post("/v2/models/digits/infer", json=request, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (response.status_code, response.json()) == (
        400,
        {"error": "input 'input' is given twice; send each input once"},
    )


@pytest.mark.parametrize("order", ["wrong_first", "right_first", "both_right"])
def test_several_authorization_headers_are_one_401_everywhere(locked: RunningServer, order: str) -> None:
    right, wrong = ("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer wrong")
    headers = {"wrong_first": [wrong, right], "right_first": [right, wrong], "both_right": [right, right]}[order]
    x = np.zeros((1, 1, 8, 8), np.float32)
    responses = [
        locked.client.post("/v2/models/digits/infer", json=json_request(x), headers=headers),
        locked.client.post("/v2/models/digits/versions/unfolded/infer", json=json_request(x), headers=headers),
        locked.client.get("/v2/models", headers=headers),
        locked.client.get("/v2/models/digits", headers=headers),
        locked.client.post("/predict", json={"model": "digits", "inputs": x.tolist()}, headers=headers),
    ]
    for response in responses:
        assert (response.status_code, response.json()) == (401, SEVERAL), response.request.url
        assert response.headers["www-authenticate"] == "Bearer"
    assert locked.client.get("/v2/models", headers=[right]).status_code == 200


def test_public_ready_of_an_unknown_model_lists_no_models(locked: RunningServer) -> None:
    public = locked.client.get("/v2/models/zzz/ready")
    assert (public.status_code, public.json()) == (404, {"error": f"model 'zzz' {NOT_READY}"})
    authenticated = locked.client.get("/v2/models/zzz/ready", headers={"Authorization": f"Bearer {TOKEN}"})
    assert authenticated.status_code == 404 and "digits, invalid_onnx" in authenticated.json()["error"]


@pytest.mark.parametrize("name", ["truncated", "missing_file", "bad_json", "invalid_onnx", "tampered"])
def test_public_ready_of_a_broken_model_says_not_ready_and_nothing_more(
    locked: RunningServer, repository: Path, name: str
) -> None:
    for path in (f"/v2/models/{name}/ready", f"/v2/models/{name}/versions/folded/ready"):
        public = locked.client.get(path)
        assert (public.status_code, public.json()) == (503, {"error": f"model {name!r} {NOT_READY}"}), path
        assert str(repository) not in public.text and ".onnx" not in public.text
    reason = locked.client.get(f"/v2/models/{name}/ready", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reason.status_code == 503 and reason.json()["error"].startswith(f"model {name!r} is not ready: ")
    assert reason.json()["error"] != f"model {name!r} {NOT_READY}"


def test_without_a_key_the_ready_reason_is_shown_to_everyone(repository: Path) -> None:
    with running_server(Settings(repository=repository)) as running:
        ready = running.client.get("/v2/models/truncated/ready")
        assert ready.status_code == 503 and "sha256 of folded.onnx is " in ready.json()["error"]
