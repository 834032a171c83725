"""The V2 gRPC protocol end to end: a real server (HTTP and gRPC in one process, free loopback ports), the
ecosystem's clients unmodified (tritonclient.grpc sync and aio, raw contents by default) and Triton's own
compiled protocol (tritonclient.grpc.service_pb2) for typed contents. Outputs are checked against onnxruntime
run directly on the repository files; errors against the gRPC code and the message HTTP gives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from bnfold.service.settings import Settings
from tests.prometheus_text import metric_sum
from tests.service.builders import Weights
from tests.service.grpc_server import RunningGrpcServer, running_grpc_server
from tests.service.oracle import json_request, run_directly

Repository = tuple[Path, dict[str, Weights]]


@pytest.fixture(scope="module")
def served(mixed_repository: Repository, grpc_transport: str) -> Iterator[RunningGrpcServer]:
    """The mixed repository (good and broken models), every default request checked."""
    settings = Settings(repository=mixed_repository[0], equivalence_policy="always", grpc_transport=grpc_transport)
    with running_grpc_server(settings) as running:
        yield running


@pytest.fixture
def client(served: RunningGrpcServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(served.grpc_address)
    yield client
    client.close()


@pytest.fixture
def stub(served: RunningGrpcServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """Triton's own compiled stub: sends exactly the messages the published protocol defines."""
    with grpc.insecure_channel(served.grpc_address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def tensor_of(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def http_parameters(served: RunningGrpcServer, x: np.ndarray, version: str = "") -> dict[str, Any]:
    path = f"/v2/models/digits/versions/{version}/infer" if version else "/v2/models/digits/infer"
    response = served.client.post(path, json=json_request(x))
    assert response.status_code == 200, response.text
    return dict(response.json()["parameters"])


def test_health(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "unfolded")
    assert client.is_model_ready("digits", "folded")
    assert not client.is_model_ready("tampered")  # refused at load: ready false, no error (as Triton)


def test_metadata_and_config_match_http(client: triton.InferenceServerClient, served: RunningGrpcServer) -> None:
    server = client.get_server_metadata()
    assert {"name": server.name, "version": server.version, "extensions": list(server.extensions)} == served.client.get(
        "/v2"
    ).json()
    http = served.client.get("/v2/models/digits").json()
    for version in ("", "unfolded"):
        metadata = client.get_model_metadata("digits", version)
        assert (metadata.name, list(metadata.versions), metadata.platform) == (
            http["name"],
            http["versions"],
            http["platform"],
        )
        assert [_tensor(t) for t in metadata.inputs] == http["inputs"]
        assert [_tensor(t) for t in metadata.outputs] == http["outputs"]
    config = client.get_model_config("digits").config
    http_config = served.client.get("/v2/models/digits/config").json()
    assert (config.name, config.platform, config.max_batch_size) == (
        http_config["name"],
        http_config["platform"],
        http_config["max_batch_size"],
    )
    entries = [
        {"name": e.name, "data_type": model_config_pb2.DataType.Name(e.data_type), "dims": list(e.dims)}
        for e in [*config.input, *config.output]
    ]
    assert entries == [*http_config["input"], *http_config["output"]]


def _tensor(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


@pytest.mark.parametrize("version", ["", "folded", "unfolded"], ids=["default", "folded", "unfolded"])
def test_infer_raw_contents(
    client: triton.InferenceServerClient,
    served: RunningGrpcServer,
    mixed_repository: Repository,
    rng: np.random.Generator,
    version: str,
) -> None:
    x = rng.uniform(-1, 1, (5, 1, 8, 8)).astype(np.float32)
    result = client.infer("digits", [tensor_of(x)], model_version=version, request_id="grpc-1")
    expected = run_directly(mixed_repository[0] / "digits", version or "folded", x)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
    response = result.get_response(as_json=True)
    assert (response["id"], response["model_name"], response["model_version"]) == (
        "grpc-1",
        "digits",
        version or "folded",
    )
    assert len(result.get_response().raw_output_contents) == 1  # asked raw (tritonclient's default), answered raw
    parameters = {key: next(iter(value.values())) for key, value in response["parameters"].items()}
    assert parameters == http_parameters(served, x, version)  # the same keys and figures as over HTTP
    assert parameters["bnfold_equivalence_checked"] is (version == "")


def typed_request(x: np.ndarray, version: str = "", **fields: Any) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    return pb.ModelInferRequest(model_name="digits", model_version=version, inputs=[tensor], **fields)


@pytest.mark.parametrize("version", ["", "unfolded"], ids=["default", "unfolded"])
def test_infer_typed_contents(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    mixed_repository: Repository,
    rng: np.random.Generator,
    version: str,
) -> None:
    """Typed contents in, typed contents out (fp32_contents), unless the request asks for binary outputs."""
    x = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    expected = run_directly(mixed_repository[0] / "digits", version or "folded", x)
    response = stub.ModelInfer(typed_request(x, version, id="typed"))
    assert (response.id, response.model_version, len(response.raw_output_contents)) == ("typed", version or "folded", 0)
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("logits", "FP32", list(expected.shape))
    typed = np.asarray(output.contents.fp32_contents, np.float32).reshape(expected.shape)
    np.testing.assert_allclose(typed, expected, rtol=1e-5, atol=1e-6)

    binary = pb.InferParameter(bool_param=True)
    asked = pb.ModelInferRequest.InferRequestedOutputTensor(name="logits", parameters={"binary_data": binary})
    response = stub.ModelInfer(typed_request(x, version, outputs=[asked]))
    assert len(response.outputs[0].contents.fp32_contents) == 0
    raw = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(expected.shape)
    np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-6)


def test_aio_client(served: RunningGrpcServer, mixed_repository: Repository, rng: np.random.Generator) -> None:
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)

    async def run() -> dict[str, np.ndarray]:
        client = triton_aio.InferenceServerClient(served.grpc_address)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("digits")
            assert (await client.get_model_metadata("digits", as_json=True))["name"] == "digits"
            results = {}
            for version in ("", "unfolded"):
                tensor = triton_aio.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                result = await client.infer("digits", [tensor], model_version=version)
                assert result.get_response().model_version == (version or "folded")
                results[version or "folded"] = result.as_numpy("logits")
            return results
        finally:
            await client.close()

    for version, logits in asyncio.run(run()).items():
        expected = run_directly(mixed_repository[0] / "digits", version, x)
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def grpc_error(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), str(caught.value.message())


def http_error(served: RunningGrpcServer, model: str, body: dict[str, Any], version: str = "") -> str:
    path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
    response = served.client.post(path, content=json.dumps(body).encode())  # NaN as the JSON token
    assert response.status_code >= 400
    return str(response.json()["error"])


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("rank", "INVALID_ARGUMENT"),
        ("datatype", "INVALID_ARGUMENT"),
        ("nan", "INVALID_ARGUMENT"),
        ("unknown_output", "INVALID_ARGUMENT"),
        ("unknown_model", "NOT_FOUND"),
        ("unknown_version", "NOT_FOUND"),
        ("not_ready", "UNAVAILABLE"),
    ],
)
def test_errors_carry_the_code_and_the_http_message(
    client: triton.InferenceServerClient, served: RunningGrpcServer, case: str, code: str
) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    model, version, outputs, datatype = "digits", "", None, "FP32"
    if case == "rank":
        x = x.reshape(1, 64)
    elif case == "datatype":
        x, datatype = x.astype(np.float64), "FP64"
    elif case == "nan":
        x[0, 0, 0, 3] = np.nan
    elif case == "unknown_output":
        outputs = [triton.InferRequestedOutput("probabilities")]
    elif case == "unknown_model":
        model = "resnet50"
    elif case == "unknown_version":
        version = "v2"
    elif case == "not_ready":
        model = "tampered"
    status, message = grpc_error(
        lambda: client.infer(model, [tensor_of(x, datatype=datatype)], model_version=version, outputs=outputs)
    )
    body = {"inputs": [{"name": "input", "datatype": datatype, "shape": list(x.shape), "data": x.reshape(-1).tolist()}]}
    if outputs:
        body["outputs"] = [{"name": "probabilities"}]
    assert (status, message) == (f"StatusCode.{code}", http_error(served, model, body, version))


def test_metadata_errors(client: triton.InferenceServerClient, served: RunningGrpcServer) -> None:
    not_found = served.client.get("/v2/models/resnet50").json()["error"]
    assert grpc_error(lambda: client.get_model_metadata("resnet50")) == ("StatusCode.NOT_FOUND", not_found)
    assert grpc_error(lambda: client.is_model_ready("resnet50")) == ("StatusCode.NOT_FOUND", not_found)
    bad_version = served.client.get("/v2/models/digits/versions/v2").json()["error"]
    assert grpc_error(lambda: client.get_model_metadata("digits", "v2")) == ("StatusCode.NOT_FOUND", bad_version)
    assert grpc_error(lambda: client.get_model_config("resnet50"))[0] == "StatusCode.NOT_FOUND"


def test_malformed_raw_and_typed_requests(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    cases = {
        "the request has 1 inputs but 2 raw_input_contents; send one raw_input_contents entry per input, in the "
        "order of inputs": _raw_request(x, [x.tobytes(), x.tobytes()]),
        "input 'input' has binary_data_size 128 but shape [1, 1, 8, 8] of float32 needs 256 bytes": _raw_request(
            x, [x.tobytes()[:128]]
        ),
        "input 'input' has datatype FP32, whose typed contents go in contents.fp32_contents, not "
        "contents.fp64_contents": _wrong_contents(x),
        "input 'input' has both contents.fp32_contents and raw_input_contents; send one of them": _both_contents(x),
    }
    for message, request in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def _raw_request(x: np.ndarray, raw: list[bytes]) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(x.shape))
    return pb.ModelInferRequest(model_name="digits", inputs=[tensor], raw_input_contents=raw)


def _both_contents(x: np.ndarray) -> pb.ModelInferRequest:
    request = _raw_request(x, [x.tobytes()])
    request.inputs[0].contents.fp32_contents.extend(x.reshape(-1).tolist())
    return request


def _wrong_contents(x: np.ndarray) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp64_contents.extend(x.reshape(-1).tolist())
    return pb.ModelInferRequest(model_name="digits", inputs=[tensor])


def test_grpc_requests_share_the_http_metrics(client: triton.InferenceServerClient, served: RunningGrpcServer) -> None:
    def count() -> float:
        text = served.client.get("/metrics").text
        return metric_sum(text, "bnfold_requests_total", model="digits", status="200", variant="unfolded")

    before = count()
    x = np.zeros((1, 1, 8, 8), np.float32)
    client.infer("digits", [tensor_of(x)], model_version="unfolded")
    assert count() == before + 1
