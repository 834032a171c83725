"""Every kind of bad input gets its 4xx and its exact one-line {"error": ...} body; the server stays healthy."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tests.service.oracle import binary_request
from tests.service.server import RunningServer

X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)
GOOD_INPUT = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": X.reshape(-1).tolist()}
MODELS = "bad_json, digits, invalid_onnx, missing_file, regressor, tampered, truncated"


def with_input(**changes: Any) -> dict[str, Any]:
    return {"inputs": [{**GOOD_INPUT, **changes}]}


def binary_case(size: int, tail: int = 256, header: str | None = None) -> tuple[bytes, dict[str, str]]:
    document = json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "parameters": {"binary_data_size": size}}
            ]
        }
    ).encode()
    return document + bytes(tail), {"Inference-Header-Content-Length": header or str(len(document))}


NAN_DATA = [*X.reshape(-1).tolist()[:5], float("nan"), *X.reshape(-1).tolist()[6:]]
NAN_MESSAGE = (
    "input 'input' contains NaN or Inf (first at flat index 5); send finite values or start the server "
    "with BNFOLD_ALLOW_NON_FINITE=true"
)

# (id, path, JSON document or (raw body, headers), status, exact error)
CASES: list[tuple[str, str, Any, int, str]] = [
    ("malformed_json", "digits", (b'{"inputs": [', {}), 400,
     "malformed JSON in request body (Expecting value: line 1 column 13 (char 12)); send a JSON object "
     "(binary tensors need the Inference-Header-Content-Length header)"),
    ("not_an_object", "digits", [1, 2], 400, "request body must be a JSON object, got list"),
    ("inputs_not_a_list", "digits", {"inputs": {"input": 1}}, 400,
     "'inputs' must be a list of objects with name, datatype, shape and data"),
    ("missing_input", "digits", {"inputs": []}, 400, "missing input 'input'; the model's inputs are ['input']"),
    ("extra_input", "digits", {"inputs": [GOOD_INPUT, {**GOOD_INPUT, "name": "mask"}]}, 400,
     "unexpected input 'mask'; the model's inputs are ['input']"),
    ("duplicate_input", "digits", {"inputs": [GOOD_INPUT, GOOD_INPUT]}, 400,
     "input 'input' is given twice; send each input once"),
    ("wrong_datatype", "digits", with_input(datatype="FP64"), 400,
     "input 'input' has datatype 'FP64', the model expects FP32"),
    ("wrong_rank", "digits", with_input(shape=[1, 64]), 400,
     "input 'input' has shape [1, 64] (rank 2), the model expects rank 4: [-1, 1, 8, 8]"),
    ("wrong_dimension", "digits", with_input(shape=[1, 1, 8, 7], data=[0.0] * 56), 400,
     "input 'input' has 7 at dimension 3 of shape [1, 1, 8, 7], the model expects 8 ([-1, 1, 8, 8])"),
    ("shape_not_integers", "digits", with_input(shape="1x64"), 400,
     "input 'input' needs 'shape' as a list of integers, like [-1, 1, 8, 8]"),
    ("data_length", "digits", with_input(data=[0.0] * 63), 400,
     "input 'input' has 63 data elements but shape [1, 1, 8, 8] needs 64"),
    ("data_not_numbers", "digits", with_input(data=["a"] * 64), 400,
     "input 'input': 'data' must hold numbers for float32"),
    ("data_ragged", "digits", with_input(data=[[0.0] * 60, [0.0] * 4]), 400,
     "input 'input': 'data' must be a flat or evenly nested list of numbers"),
    ("no_data", "digits", {"inputs": [{k: v for k, v in GOOD_INPUT.items() if k != "data"}]}, 400,
     "input 'input' has neither 'data' nor parameters.binary_data_size"),
    ("nan", "digits", with_input(data=NAN_DATA), 400, NAN_MESSAGE),
    ("binary_size_not_shape", "digits", binary_case(255), 400,
     "input 'input' has binary_data_size 255 but shape [1, 1, 8, 8] of float32 needs 256 bytes"),
    ("binary_tail_too_long", "digits", binary_case(256, tail=260), 400,
     "binary data is 260 bytes but the inputs' binary_data_size add up to 256; make each binary_data_size "
     "match its tensor"),
    ("binary_tail_too_short", "digits", binary_case(256, tail=200), 400,
     "input 'input' declares 256 binary bytes but only 200 follow the JSON header"),
    ("binary_header_past_body", "digits", binary_case(256, header="99999"), 400,
     f"Inference-Header-Content-Length 99999 is outside the body of {len(binary_case(256)[0])} bytes; send "
     "the byte length of the JSON part"),
    ("binary_header_not_int", "digits", binary_case(256, header="ten"), 400,
     "Inference-Header-Content-Length 'ten' is not an integer; send the JSON length in bytes"),
    ("unknown_output", "digits", {**with_input(), "outputs": [{"name": "probs"}]}, 400,
     "unknown output 'probs'; the model's outputs are ['logits']"),
    ("id_not_string", "digits", {**with_input(), "id": 7}, 400, "'id' must be a string, got int"),
    ("unknown_model", "nope", with_input(), 404, f"unknown model 'nope'; available models: {MODELS}"),
    ("unknown_version", "digits/versions/v3", with_input(), 404,
     "unknown version 'v3' of model 'digits'; versions are 'folded' and 'unfolded'"),
    ("model_not_ready", "truncated", with_input(), 503, "model 'truncated' is not ready: sha256 of folded.onnx is "),
]  # fmt: skip


@pytest.mark.parametrize(("path", "request_body", "status", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_infer_request(server: RunningServer, path: str, request_body: Any, status: int, error: str) -> None:
    url = f"/v2/models/{path}/infer"
    if isinstance(request_body, tuple):
        response = server.client.post(url, content=request_body[0], headers=request_body[1])
    else:
        response = server.client.post(url, content=json.dumps(request_body).encode())
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    if status == 503:  # the digest in the reason is random per run
        assert response.json()["error"].startswith(error)
        assert set(response.json()) == {"error"}
    else:
        assert response.json() == {"error": error}


def test_nan_in_binary_data_is_rejected(server: RunningServer) -> None:
    x = X.copy()
    x.reshape(-1)[5] = np.inf
    body, headers = binary_request(x)
    response = server.client.post("/v2/models/digits/infer", content=body, headers=headers)
    assert (response.status_code, response.json()) == (400, {"error": NAN_MESSAGE})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"inputs": X.tolist()}, '\'model\' must be a string naming the model, like {"model": "digits_resnet"}'),
        (
            {"model": "digits", "inputs": X.tolist(), "variant": "fast"},
            "'variant' is 'fast'; use one of folded, unfolded, both",
        ),
        (
            {"model": "digits", "inputs": X[0].tolist()},
            "input 'input' has shape [1, 8, 8] (rank 3), the model expects rank 4: [-1, 1, 8, 8]",
        ),
        (
            {"model": "digits", "inputs": {"image": X.tolist()}},
            "unexpected input 'image'; the model's inputs are ['input']",
        ),
    ],
    ids=["no_model", "bad_variant", "wrong_rank", "wrong_name"],
)
def test_bad_predict_request(server: RunningServer, body: dict[str, Any], error: str) -> None:
    response = server.client.post("/predict", json=body)
    assert (response.status_code, response.json()) == (400, {"error": error})


def test_unknown_routes_and_methods_answer_in_the_error_format(server: RunningServer) -> None:
    missing = server.client.get("/v2/nothing")
    assert (missing.status_code, missing.json()) == (
        404,
        {"error": "no route GET /v2/nothing; the endpoints are listed in docs/service.md"},
    )
    wrong = server.client.get("/v2/models/digits/infer")
    assert (wrong.status_code, wrong.json()) == (405, {"error": "method GET is not allowed on /v2/models/digits/infer"})
    version = server.client.get("/v2/models/digits/versions/v9/ready")
    assert (version.status_code, version.json()["error"]) == (
        404,
        "unknown version 'v9' of model 'digits'; versions are 'folded' and 'unfolded'",
    )


def test_server_stays_healthy_after_bad_input(server: RunningServer) -> None:
    for body in (b"\x00\xff binary garbage", b"", b"null"):
        assert server.client.post("/v2/models/digits/infer", content=body).status_code == 400
    assert server.client.get("/v2/health/ready").status_code == 200
    good = server.client.post("/v2/models/digits/infer", json={"inputs": [GOOD_INPUT]})
    assert good.status_code == 200 and good.json()["outputs"][0]["shape"] == [1, 3]
