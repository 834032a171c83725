"""gRPC with BNFOLD_API_KEY set and tight limits: public and protected RPCs, the bearer metadata, the batch
and message-size limits (RESOURCE_EXHAUSTED), and the repository RPCs and statistics against HTTP's."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from pydantic import SecretStr
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from bnfold.service.control import UNSUPPORTED_LOAD
from bnfold.service.settings import Settings
from tests.service.builders import manifest_for, write_entry
from tests.service.grpc_server import RunningGrpcServer, running_grpc_server
from tests.service.oracle import binary_request, run_directly
from tests.service.test_runtime_errors import fragile_graph

TOKEN = "s3cret-token"
GOOD = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator, grpc_transport: str) -> Path:
    """One per transport: a test writes a model into it."""
    root = tmp_path_factory.mktemp(f"grpc_single_{grpc_transport}")
    write_entry(root, "digits", rng)
    return root


@pytest.fixture(scope="module")
def locked(repository: Path, grpc_transport: str) -> Iterator[RunningGrpcServer]:
    settings = Settings(
        repository=repository,
        api_key=SecretStr(TOKEN),
        max_body_bytes=4096,
        max_batch_size=4,
        grpc_transport=grpc_transport,
    )
    with running_grpc_server(settings) as running:
        yield running


@pytest.fixture
def client(locked: RunningGrpcServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(locked.grpc_address)
    yield client
    client.close()


def tensor_of(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def status_and_message(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), str(caught.value.message())


def protected_calls(client: triton.InferenceServerClient, headers: dict[str, str] | None) -> list[Any]:
    x = np.zeros((1, 1, 8, 8), np.float32)
    return [
        lambda: client.get_server_metadata(headers=headers),
        lambda: client.get_model_metadata("digits", headers=headers),
        lambda: client.get_model_config("digits", headers=headers),
        lambda: client.infer("digits", [tensor_of(x)], headers=headers),
        lambda: client.get_model_repository_index(headers=headers),
        lambda: client.load_model("digits", headers=headers),
        lambda: client.unload_model("digits", headers=headers),
    ]


def test_health_rpcs_are_public(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "folded")


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_everything_else_needs_the_token(
    client: triton.InferenceServerClient, locked: RunningGrpcServer, authorization: str | None
) -> None:
    headers = None if authorization is None else {"authorization": authorization}
    http = locked.client.get("/v2", headers={} if headers is None else {"Authorization": authorization or ""})
    assert http.status_code == 401
    for call in protected_calls(client, headers):
        assert status_and_message(call) == ("StatusCode.UNAUTHENTICATED", http.json()["error"])


def test_the_token_opens_everything(
    client: triton.InferenceServerClient, repository: Path, rng: np.random.Generator
) -> None:
    assert client.get_server_metadata(headers=GOOD).name == "bnfold"
    assert client.get_model_metadata("digits", headers=GOOD).name == "digits"
    assert client.get_model_config("digits", headers=GOOD).config.max_batch_size == 4
    x = rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    result = client.infer("digits", [tensor_of(x)], model_version="unfolded", headers=GOOD)
    np.testing.assert_allclose(
        result.as_numpy("logits"), run_directly(repository / "digits", "unfolded", x), 1e-5, 1e-6
    )


def test_repository_rpcs_and_statistics_match_http(
    client: triton.InferenceServerClient, locked: RunningGrpcServer, repository: Path, rng: np.random.Generator
) -> None:
    """A model written into the served repository is loaded, listed, counted and unloaded over gRPC, and every
    answer equals the HTTP extension's."""
    write_entry(repository, "spare", rng)
    client.load_model("spare", headers=GOOD)
    index = {
        (row.name, row.version): (row.state, row.reason)
        for row in client.get_model_repository_index(headers=GOOD).models
    }
    http_index = locked.client.post("/v2/repository/index", headers=GOOD).json()
    assert index == {(row["name"], row.get("version", "")): (row["state"], row["reason"]) for row in http_index}
    assert index[("spare", "folded")] == index[("spare", "unfolded")] == ("READY", "")

    x = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    for version in ("folded", "folded", "unfolded"):
        result = client.infer("spare", [tensor_of(x)], model_version=version, headers=GOOD)
        np.testing.assert_allclose(
            result.as_numpy("logits"), run_directly(repository / "spare", version, x), 1e-5, 1e-6
        )
    stats = {row.version: row for row in client.get_inference_statistics("spare", headers=GOOD).model_stats}
    assert (stats["folded"].inference_stats.success.count, stats["folded"].inference_count) == (2, 6)
    assert (stats["unfolded"].inference_stats.success.count, stats["unfolded"].inference_count) == (1, 3)
    http_stats = locked.client.get("/v2/models/spare/stats", headers=GOOD).json()["model_stats"]
    assert {row["version"]: row["inference_stats"]["success"]["count"] for row in http_stats} == {
        "folded": 2,
        "unfolded": 1,
    }
    assert {row["version"]: row["execution_count"] for row in http_stats} == {
        version: row.execution_count for version, row in stats.items()
    }

    status, message = status_and_message(lambda: client.load_model("spare", config="{}", headers=GOOD))
    assert (status, message) == ("StatusCode.INVALID_ARGUMENT", UNSUPPORTED_LOAD)
    client.unload_model("spare", headers=GOOD)
    status, message = status_and_message(lambda: client.infer("spare", [tensor_of(x)], headers=GOOD))
    http = locked.client.post("/v2/models/spare/infer", json={"inputs": []}, headers=GOOD)
    assert status == "StatusCode.NOT_FOUND" and http.status_code == 404 and message == http.json()["error"]


def test_batch_over_the_limit(client: triton.InferenceServerClient, locked: RunningGrpcServer) -> None:
    x = np.zeros((5, 1, 8, 8), np.float32)
    body, headers = binary_request(x)
    http = locked.client.post(
        "/v2/models/digits/infer", content=body, headers={**headers, "Authorization": GOOD["authorization"]}
    )
    assert http.status_code == 413
    call = lambda: client.infer("digits", [tensor_of(x)], headers=GOOD)  # noqa: E731
    assert status_and_message(call) == ("StatusCode.RESOURCE_EXHAUSTED", http.json()["error"])


def _infer_message(x: np.ndarray) -> bytes:
    """The ModelInferRequest tritonclient sends for `x` (Triton's compiled protocol), serialised."""
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return bytes(request.SerializeToString())


def test_message_over_the_body_limit(client: triton.InferenceServerClient, grpc_transport: str) -> None:
    """A message over BNFOLD_MAX_BODY_BYTES (4096 here) is refused before it is parsed: by the HTTP/2 transport
    with the limit and the fix, by grpcio with its own wording."""
    x = np.zeros((20, 1, 8, 8), np.float32)  # 5120 bytes of tensor data
    size = len(_infer_message(x))
    status, message = status_and_message(lambda: client.infer("digits", [tensor_of(x)], headers=GOOD))
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    assert (
        message
        == {
            "http2": f"a message of {size} bytes is over the limit of 4096 bytes; send a smaller batch or raise "
            "BNFOLD_MAX_BODY_BYTES",
            "grpcio": f"SERVER: Received message larger than max ({size} vs. 4096)",
        }[grpc_transport]
    )
    assert client.is_server_live()  # the connection survives


def test_onnxruntime_failure_is_internal_with_the_http_message(
    tmp_path: Path, rng: np.random.Generator, grpc_transport: str
) -> None:
    """Input that passes every check but makes onnxruntime fail: INTERNAL, the HTTP 500's message; the server
    keeps serving."""
    entry = tmp_path / "fragile"
    entry.mkdir()
    model = fragile_graph(rng)
    onnx.save(model, entry / "unfolded.onnx")
    onnx.save(model, entry / "folded.onnx")
    np.savez(entry / "calibration.npz", input=rng.uniform(-1, 1, (8, 1, 8, 8)).astype(np.float32))
    (entry / "model.json").write_text(json.dumps(manifest_for("fragile", "regression", entry)))
    with running_grpc_server(
        Settings(repository=tmp_path, equivalence_policy="off", grpc_transport=grpc_transport)
    ) as running:
        client = triton.InferenceServerClient(running.grpc_address)
        client.infer("fragile", [tensor_of(np.ones((8, 1, 8, 8), np.float32))])
        x = np.ones((2, 1, 8, 8), np.float32)
        status, message = status_and_message(lambda: client.infer("fragile", [tensor_of(x)]))
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": x.ravel().tolist()}]}
        http = running.client.post("/v2/models/fragile/infer", json=body)
        assert (status, message) == ("StatusCode.INTERNAL", http.json()["error"])
        assert message.startswith("onnxruntime failed on model 'fragile' (folded): ")
        assert client.is_server_ready()
        client.close()


def stream_answers(
    client: triton.InferenceServerClient, inputs: list[np.ndarray], headers: dict[str, str] | None
) -> list[tuple[Any, Any]]:
    """Each input sent on one ModelStreamInfer stream; the (result, error) pairs of its callbacks, in order."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
    for index, x in enumerate(inputs):
        client.async_stream_infer("digits", [tensor_of(x)], request_id=str(index))
    client.stop_stream()
    return [answers.get_nowait() for _ in range(answers.qsize())]


def test_a_stream_needs_the_token(
    client: triton.InferenceServerClient, locked: RunningGrpcServer, repository: Path, rng: np.random.Generator
) -> None:
    """Without the token (or with a wrong one) the stream is refused as it opens (UNAUTHENTICATED, no answers);
    with it, a batch over the limit is one error answer (RESOURCE_EXHAUSTED's message) and the next request is
    answered."""
    unauthorized = locked.client.get("/v2").json()["error"]
    x = rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    request = service_pb2.ModelInferRequest.FromString(_infer_message(x))
    with grpc.insecure_channel(locked.grpc_address) as channel:
        stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer
        with pytest.raises(grpc.RpcError) as caught:
            list(stream(iter([request])))
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, unauthorized)
        with pytest.raises(grpc.RpcError) as caught:
            list(stream(iter([request]), metadata=[("authorization", "Bearer wrong")]))
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, unauthorized)

    too_big = np.zeros((5, 1, 8, 8), np.float32)
    body, headers = binary_request(too_big)
    http = locked.client.post(
        "/v2/models/digits/infer", content=body, headers={**headers, "Authorization": GOOD["authorization"]}
    )
    assert http.status_code == 413
    (_, error), (answered, no_error) = stream_answers(client, [too_big, x], GOOD)  # in request order
    assert (error.message(), no_error) == (http.json()["error"], None)
    assert answered.get_response().id == "1"
    np.testing.assert_allclose(
        answered.as_numpy("logits"), run_directly(repository / "digits", "folded", x), 1e-5, 1e-6
    )


def test_calls_beyond_the_concurrent_rpc_limit_are_refused(
    repository: Path, rng: np.random.Generator, grpc_transport: str
) -> None:
    """With BNFOLD_GRPC_MAX_CONCURRENT_RPCS=1, an open stream is the one RPC in progress: another call is
    refused (RESOURCE_EXHAUSTED) without touching the stream, which is answered once
    it goes on; after it the call is served."""
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    request = service_pb2.ModelInferRequest.FromString(_infer_message(x))
    go_on = threading.Event()

    def held_open() -> Iterator[service_pb2.ModelInferRequest]:
        yield request
        go_on.wait(30)
        yield request

    with (
        running_grpc_server(
            Settings(repository=repository, grpc_max_concurrent_rpcs=1, grpc_transport=grpc_transport)
        ) as served,
        grpc.insecure_channel(served.grpc_address) as channel,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answers = stub.ModelStreamInfer(held_open())
        first = next(answers)  # the stream is in progress
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert (caught.value.code(), caught.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            {
                "http2": "1 gRPC calls and streams are in progress, the most BNFOLD_GRPC_MAX_CONCURRENT_RPCS allows; "
                "retry later",
                "grpcio": "Concurrent RPC limit exceeded!",
            }[grpc_transport],
        )
        go_on.set()
        rest = list(answers)
        expected = run_directly(repository / "digits", "folded", x)
        for answer in (first, *rest):
            np.testing.assert_allclose(_logits(answer.infer_response), expected, rtol=1e-5, atol=1e-6)
        assert len(rest) == 1
        np.testing.assert_allclose(_logits(stub.ModelInfer(request)), expected, rtol=1e-5, atol=1e-6)


def _logits(response: service_pb2.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))
