"""ModelStreamInfer end to end: a real server (HTTP and gRPC in one process), tritonclient.grpc's stream (sync
callbacks and aio `stream_infer`) and Triton's compiled stub. Every answer is checked against onnxruntime run
directly on the repository files; failed requests against the message ModelInfer gives for the same request."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from bnfold.service.settings import Settings
from tests.prometheus_text import metric_sum
from tests.service.builders import Weights
from tests.service.grpc_server import RunningGrpcServer, running_grpc_server
from tests.service.oracle import run_directly

Repository = tuple[Path, dict[str, Weights]]
VERSIONS = ("", "folded", "unfolded")


@pytest.fixture(scope="module")
def served(mixed_repository: Repository, grpc_transport: str) -> Iterator[RunningGrpcServer]:
    settings = Settings(repository=mixed_repository[0], equivalence_policy="always", grpc_transport=grpc_transport)
    with running_grpc_server(settings) as running:
        yield running


def tensor_of(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def raw_request(x: np.ndarray, request_id: str, model: str = "digits", version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


def logits(response: pb.ModelInferResponse) -> np.ndarray:
    (output,) = response.outputs
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(output.shape))


def test_sync_stream_answers_every_request(
    served: RunningGrpcServer, mixed_repository: Repository, rng: np.random.Generator
) -> None:
    """24 requests sent without waiting (random batch sizes, every version): 24 answers, in request order."""
    inputs = {f"r{i}": rng.uniform(-1, 1, (int(rng.integers(1, 5)), 1, 8, 8)).astype(np.float32) for i in range(24)}
    versions = {request_id: VERSIONS[i % 3] for i, request_id in enumerate(inputs)}
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = triton.InferenceServerClient(served.grpc_address)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for request_id, x in inputs.items():
            client.async_stream_infer(
                "digits", [tensor_of(x)], model_version=versions[request_id], request_id=request_id
            )
        received = [answers.get(timeout=30) for _ in inputs]
        client.stop_stream()
    finally:
        client.close()
    assert [error for _, error in received] == [None] * len(inputs)
    assert [result.get_response().id for result, _ in received] == list(inputs)  # answered in request order
    for request_id, result in zip(inputs, (result for result, _ in received), strict=True):
        version = versions[request_id]
        response = result.get_response(as_json=True)
        assert response["model_version"] == (version or "folded")
        parameters = response["parameters"]
        assert parameters["bnfold_equivalence_checked"]["bool_param"] is (version == "")  # policy always
        assert parameters["triton_final_response"]["bool_param"] is True
        expected = run_directly(mixed_repository[0] / "digits", version or "folded", inputs[request_id])
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)


def test_aio_stream_infer(served: RunningGrpcServer, mixed_repository: Repository, rng: np.random.Generator) -> None:
    inputs = [rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32) for _ in range(6)]

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for index, x in enumerate(inputs):
            tensor = triton_aio.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            yield {"model_name": "digits", "inputs": [tensor], "model_version": "unfolded", "request_id": str(index)}

    async def run() -> dict[str, np.ndarray]:
        client = triton_aio.InferenceServerClient(served.grpc_address)
        try:
            found = {}
            async for result, error in client.stream_infer(requests()):
                assert error is None
                found[result.get_response().id] = result.as_numpy("logits")
            return found
        finally:
            await client.close()

    found = asyncio.run(run())
    assert list(found) == [str(i) for i in range(len(inputs))]
    for index, x in enumerate(inputs):
        expected = run_directly(mixed_repository[0] / "digits", "unfolded", x)
        np.testing.assert_allclose(found[str(index)], expected, rtol=1e-5, atol=1e-6)


def test_a_failed_request_is_answered_on_the_stream_which_goes_on(
    served: RunningGrpcServer, mixed_repository: Repository, rng: np.random.Generator
) -> None:
    """Each failure is one answer, in its place: ModelInfer's message for that request, with the request's
    id, model and version; the requests around it are answered normally."""
    good = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    nan = good.copy()
    nan[1, 0, 2, 5] = np.nan
    failing = {
        "rank": raw_request(good.reshape(3, 64), "rank"),
        "nan": raw_request(nan, "nan"),
        "unknown_model": raw_request(good, "unknown_model", model="resnet50"),
        "unknown_version": raw_request(good, "unknown_version", version="v2"),
        "not_ready": raw_request(good, "not_ready", model="tampered"),
        "raw_count": pb.ModelInferRequest(
            model_name="digits", id="raw_count", inputs=raw_request(good, "").inputs, raw_input_contents=[b"", b""]
        ),
    }
    sent = [raw_request(good, "first"), *failing.values(), raw_request(good, "last", version="unfolded")]
    with grpc.insecure_channel(served.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answered = list(stub.ModelStreamInfer(iter(sent)))
        answers = {answer.infer_response.id: answer for answer in answered}
        unary = {}
        for request_id, request in failing.items():
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request)
            unary[request_id] = caught.value.details()
    assert [answer.infer_response.id for answer in answered] == [request.id for request in sent]
    assert all(answer.infer_response.parameters["triton_final_response"].bool_param for answer in answered)
    for request_id, request in failing.items():
        answer = answers[request_id]
        identity = (answer.infer_response.model_name, answer.infer_response.model_version)
        assert (answer.error_message, identity) == (unary[request_id], (request.model_name, request.model_version))
        assert not answer.infer_response.outputs
    assert "rank 2" in answers["rank"].error_message and "NaN" in answers["nan"].error_message
    for request_id, version in (("first", "folded"), ("last", "unfolded")):
        answer = answers[request_id]
        assert (answer.error_message, answer.infer_response.model_version) == ("", version)
        expected = run_directly(mixed_repository[0] / "digits", version, good)
        np.testing.assert_allclose(logits(answer.infer_response), expected, rtol=1e-5, atol=1e-6)


def test_stream_requests_share_the_http_metrics(served: RunningGrpcServer, rng: np.random.Generator) -> None:
    def count(status: str) -> float:
        return requests_total(served, "unfolded", status=status)

    before = count("200"), count("400")
    x = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    bad = raw_request(x.reshape(1, 64), "bad", version="unfolded")
    sent = [raw_request(x, str(i), version="unfolded") for i in range(5)] + [bad]
    with grpc.insecure_channel(served.grpc_address) as channel:
        answers = list(service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(sent)))
    assert len(answers) == 6
    assert (count("200"), count("400")) == (before[0] + 5, before[1] + 1)


def test_a_cancelled_stream_stops_its_runs_quietly(
    served: RunningGrpcServer, mixed_repository: Repository, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    """The client cancels with requests unanswered: the server stops running them (fewer runs than requests),
    logs nothing about it, and answers the next stream."""
    x = rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    sent = 1000
    before = requests_total(served)
    client = triton.InferenceServerClient(served.grpc_address)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    try:
        with caplog.at_level(logging.WARNING, logger="bnfold"):
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            for index in range(sent):
                client.async_stream_infer("digits", [tensor_of(x)], model_version="folded", request_id=str(index))
            answers.get(timeout=30)  # the stream is running
            client.stop_stream(cancel_requests=True)
            run = settled_requests_total(served) - before
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            client.async_stream_infer("digits", [tensor_of(x)], model_version="unfolded", request_id="after")
            client.stop_stream()  # waits for the answer
        assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    finally:
        client.close()
    assert 0 < run < sent
    received = [answers.get_nowait() for _ in range(answers.qsize())]
    after = [result for result, _ in received if result is not None and result.get_response().id == "after"]
    assert len(after) == 1
    expected = run_directly(mixed_repository[0] / "digits", "unfolded", x)
    np.testing.assert_allclose(after[0].as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)


def requests_total(served: RunningGrpcServer, variant: str = "folded", **labels: str) -> float:
    """Requests answered for digits' `variant` (of any status, unless `status` is given)."""
    text = served.client.get("/metrics").text
    return metric_sum(text, "bnfold_requests_total", model="digits", variant=variant, **labels)


def settled_requests_total(served: RunningGrpcServer) -> float:
    """requests_total once it has not changed for half a second (the server has stopped working on a stream)."""
    last, deadline = requests_total(served), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = requests_total(served)
        if now == last:
            return now
        last = now
    raise AssertionError("the server kept running requests for 30 s")


def test_an_unreadable_message_ends_the_stream_after_the_answers_before_it(
    served: RunningGrpcServer, rng: np.random.Generator
) -> None:
    x = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    sent = [raw_request(x, "ok").SerializeToString(), b"\xff\xff\xff\x01 not protobuf"]
    with grpc.insecure_channel(served.grpc_address) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(iter(sent))
        answers = []
        with pytest.raises(grpc.RpcError) as caught:
            for answer in call:
                answers.append(pb.ModelStreamInferResponse.FromString(answer))
    assert [(answer.infer_response.id, answer.error_message) for answer in answers] == [("ok", "")]
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "a message of the stream is not a ModelInferRequest (Error parsing message with type "
        "'inference.ModelInferRequest'); send one per message",
    )


def test_a_stream_keeps_at_most_in_flight_requests_and_answers_in_order() -> None:
    """answer_stream with runs held open: at most `in_flight` requests are read and unanswered, the next is
    read only once an answer is written, answers go out one at a time in request order (a finished request
    waits for the ones before it), and an unexpected error is that request's answer."""
    from bnfold.service.grpc_v2 import inference_pb2 as ours
    from bnfold.service.grpc_v2.streaming import answer_stream

    async def scenario() -> list[tuple[str, int, list[str], list[str]]]:
        released = {str(i): asyncio.Event() for i in range(7)}
        pulled: list[str] = []
        running: set[str] = set()
        written: list[str] = []
        writing = False

        async def requests() -> AsyncIterator[ours.ModelInferRequest]:
            for request_id in released:
                pulled.append(request_id)
                yield ours.ModelInferRequest(id=request_id, model_name="m")

        async def infer(request: ours.ModelInferRequest) -> ours.ModelInferResponse:
            running.add(request.id)
            await released[request.id].wait()
            running.discard(request.id)
            if request.id == "5":
                raise RuntimeError("boom")
            return ours.ModelInferResponse(id=request.id)

        async def write(response: ours.ModelStreamInferResponse) -> None:
            nonlocal writing
            assert not writing, "two writes at once"
            assert response.infer_response.parameters["triton_final_response"].bool_param
            writing = True
            await asyncio.sleep(0)
            written.append(response.error_message or response.infer_response.id)
            writing = False

        def fail(request: ours.ModelInferRequest, error: Exception) -> str:
            return f"failed {request.id}: {error}"

        async def settle() -> None:
            for _ in range(50):  # one loop, no I/O: every task that can move has moved
                await asyncio.sleep(0)

        task = asyncio.create_task(answer_stream(requests(), infer, write, fail, in_flight=3))
        steps = []
        for release in ("", "2", "0", "1", "5", "3", "6", "4"):
            if release:
                released[release].set()
            await settle()
            steps.append((release, len(pulled), sorted(running), list(written)))
        await asyncio.wait_for(task, 5)
        return steps

    assert asyncio.run(scenario()) == [
        ("", 3, ["0", "1", "2"], []),
        ("2", 3, ["0", "1"], []),  # 2 is done but waits for 0 and 1; its slot is still taken
        ("0", 4, ["1", "3"], ["0"]),
        ("1", 6, ["3", "4", "5"], ["0", "1", "2"]),
        ("5", 6, ["3", "4"], ["0", "1", "2"]),
        ("3", 7, ["4", "6"], ["0", "1", "2", "3"]),
        ("6", 7, ["4"], ["0", "1", "2", "3"]),
        ("4", 7, [], ["0", "1", "2", "3", "4", "failed 5: boom", "6"]),
    ]


def test_a_request_cancelled_under_the_stream_is_answered_with_an_error() -> None:
    """A run cancelled by the server (its batcher stopped while the request waited) is that request's error
    answer; the stream, not cancelled itself, goes on."""
    from bnfold.service.grpc_v2 import inference_pb2 as ours
    from bnfold.service.grpc_v2.streaming import CANCELLED, answer_stream

    async def scenario() -> list[tuple[str, str]]:
        written: list[tuple[str, str]] = []

        async def requests() -> AsyncIterator[ours.ModelInferRequest]:
            for request_id in ("a", "b", "c"):
                yield ours.ModelInferRequest(id=request_id)

        async def infer(request: ours.ModelInferRequest) -> ours.ModelInferResponse:
            if request.id == "b":
                raise asyncio.CancelledError  # what a stopped batcher delivers to its waiting callers
            return ours.ModelInferResponse(id=request.id)

        async def write(response: ours.ModelStreamInferResponse) -> None:
            written.append((response.infer_response.id, response.error_message))

        await answer_stream(requests(), infer, write, lambda request, error: "unexpected", in_flight=4)
        return written

    assert asyncio.run(scenario()) == [("a", ""), ("b", CANCELLED), ("c", "")]
