"""The gRPC port on bnfold's HTTP/2 server (BNFOLD_GRPC_TRANSPORT=http2): the rules grpc's own server would enforce —
message size before and after decompression, compressed messages, deadlines, unknown methods and encodings,
framing — with their exact statuses and messages, and a long stream from tritonclient answered in order."""

from __future__ import annotations

import asyncio
import gzip
import queue
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio

from bnfold.service.grpc_v2 import inference_pb2 as pb
from bnfold.service.grpc_v2.http2 import STOPPING, grpc_timeout
from bnfold.service.grpc_v2.http2_server import STREAMS_PER_CONNECTION
from bnfold.service.settings import Settings
from tests.service.builders import write_entry
from tests.service.grpc_server import RunningGrpcServer, running_grpc_server
from tests.service.oracle import run_directly
from tests.service.raw_grpc import framed, raw_call

LIMIT = 4096


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("grpc_http2")
    write_entry(root, "digits", rng)
    return root


@pytest.fixture(scope="module")
def served(repository: Path) -> Iterator[RunningGrpcServer]:
    settings = Settings(repository=repository, max_body_bytes=LIMIT, grpc_transport="http2", equivalence_policy="off")
    with running_grpc_server(settings) as running:
        yield running


def infer_request(x: np.ndarray, request_id: str = "") -> bytes:
    request = pb.ModelInferRequest(model_name="digits", id=request_id)
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def logits_of(message: bytes) -> np.ndarray:
    response = pb.ModelInferResponse.FromString(message)
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(response.outputs[0].shape))


def test_compressed_requests_are_read(served: RunningGrpcServer, repository: Path, rng: np.random.Generator) -> None:
    """tritonclient's gzip and deflate requests are decompressed and answered as uncompressed ones."""
    x = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    expected = run_directly(repository / "digits", "folded", x)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with triton.InferenceServerClient(served.grpc_address) as client:
        for algorithm in ("gzip", "deflate"):
            result = client.infer("digits", [tensor], compression_algorithm=algorithm)
            np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)


def test_raw_gzip_and_deflate_frames(served: RunningGrpcServer, repository: Path, rng: np.random.Generator) -> None:
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    expected = run_directly(repository / "digits", "folded", x)
    for encoding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        body = framed(compress(infer_request(x)), compressed=True)
        answer = raw_call(served.grpc_address, "ModelInfer", body, [(b"grpc-encoding", encoding.encode())])
        assert (answer.status, answer.grpc_status, answer.grpc_message) == (200, 0, "")
        (message,) = answer.messages()
        np.testing.assert_allclose(logits_of(message), expected, rtol=1e-5, atol=1e-6)


OVER = f"a message of {{}} is over the limit of {LIMIT} bytes; send a smaller batch or raise BNFOLD_MAX_BODY_BYTES"
CASES: dict[str, tuple[str, bytes, list[tuple[bytes, bytes]], int, str]] = {
    "unknown method": (
        "ModelTrain", framed(b""), [], 12,
        "/inference.GRPCInferenceService/ModelTrain is not a method of inference.GRPCInferenceService, the "
        "service on this port",
    ),
    "unknown encoding": (
        "ServerLive", framed(b""), [(b"grpc-encoding", b"br")], 12,
        "grpc-encoding 'br' is not supported; send identity, gzip or deflate",
    ),
    "compressed without an encoding": (
        "ServerLive", framed(gzip.compress(b""), compressed=True), [], 13,
        "a message is flagged compressed but the call's grpc-encoding is identity",
    ),
    "a gzip message that is not gzip": (
        "ServerLive", framed(b"not gzip", compressed=True), [(b"grpc-encoding", b"gzip")], 3,
        "a gzip message does not decompress (Error -3 while decompressing data: incorrect header check)",
    ),
    "a truncated gzip message": (
        "ServerLive", framed(gzip.compress(b"\x08\x01")[:-4], compressed=True), [(b"grpc-encoding", b"gzip")], 3,
        "a gzip message is truncated or has bytes after its end; send it whole",
    ),
    "a message over the limit": ("ServerLive", framed(bytes(LIMIT + 1)), [], 8, OVER.format(f"{LIMIT + 1} bytes")),
    "a decompression bomb": (
        "ServerLive", framed(gzip.compress(bytes(1 << 20)), compressed=True), [(b"grpc-encoding", b"gzip")], 8,
        OVER.format(f"more than {LIMIT} bytes decompressed"),
    ),
    "no message": ("ServerLive", b"", [], 3, "a unary call carries exactly one ServerLiveRequest; send one message"),
    "two messages": (
        "ServerLive", framed(b"") + framed(b""), [], 3,
        "a unary call carries exactly one ServerLiveRequest; send one message",
    ),
    "a body that ends inside a message": (
        "ServerLive", framed(b"abc")[:-1], [], 3, "the request body ends inside a message (7 bytes left)",
    ),
    "not the message": (
        "ModelReady", framed(b"\xff\xff\xff"), [], 3,
        "the message is not a ModelReadyRequest (Error parsing message with type 'inference.ModelReadyRequest')",
    ),
    "a malformed deadline": (
        "ServerLive", framed(b""), [(b"grpc-timeout", b"soon")], 3,
        "grpc-timeout 'soon' is not <digits><H|M|S|m|u|n>",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_what_grpc_clients_never_send_gets_a_status_and_a_message(served: RunningGrpcServer, case: str) -> None:
    method, body, headers, status, message = CASES[case]
    answer = raw_call(served.grpc_address, method, body, headers)
    assert (answer.status, answer.grpc_status, answer.grpc_message, answer.body) == (200, status, message, b"")
    assert answer.headers[b"grpc-accept-encoding"] == b"identity,deflate,gzip"


def test_a_transport_error_inside_a_stream_keeps_its_code_and_message(
    served: RunningGrpcServer, repository: Path, rng: np.random.Generator
) -> None:
    """A message flagged compressed on an identity stream ends the stream at once with INTERNAL and the
    transport's own message (not an unexpected-error message); the request before it, still waiting, is not
    answered (unlike a message that does not parse, which waits for the answers before it)."""
    x = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    body = framed(infer_request(x, "first")) + framed(gzip.compress(infer_request(x)), compressed=True)
    answer = raw_call(served.grpc_address, "ModelStreamInfer", body)
    assert (answer.grpc_status, answer.grpc_message) == (
        13,
        "a message is flagged compressed but the call's grpc-encoding is identity",
    )
    assert answer.messages() == []


def test_a_stream_that_goes_quiet_past_its_deadline(
    served: RunningGrpcServer, repository: Path, rng: np.random.Generator
) -> None:
    """The request sent before the client went quiet is answered; then DEADLINE_EXCEEDED (grpc-timeout 300m)."""
    x = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    body = framed(infer_request(x, "only"))
    headers = [(b"grpc-timeout", b"300m")]
    answer = raw_call(served.grpc_address, "ModelStreamInfer", body, headers, close_request=False)
    assert (answer.grpc_status, answer.grpc_message) == (4, "Deadline Exceeded")
    (message,) = answer.messages()
    response = pb.ModelStreamInferResponse.FromString(message)
    assert (response.error_message, response.infer_response.id) == ("", "only")
    expected = run_directly(repository / "digits", "folded", x)
    np.testing.assert_allclose(logits_of(response.infer_response.SerializeToString()), expected, 1e-5, 1e-6)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("4999953u", 4.999953), ("100m", 0.1), ("2S", 2.0), ("1M", 60.0), ("1H", 3600.0), ("25000000n", 0.025)],
)
def test_grpc_timeout_headers_in_every_unit(header: str, seconds: float) -> None:
    assert grpc_timeout(header) == pytest.approx(seconds)


def test_a_call_with_a_grpcio_deadline_is_answered(served: RunningGrpcServer) -> None:
    """grpcio's own grpc-timeout header (microseconds, e.g. 4999953u) is read: a malformed-deadline refusal
    would end this call INVALID_ARGUMENT."""
    with grpc.insecure_channel(served.grpc_address) as channel:
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        assert live(pb.ServerLiveRequest(), timeout=5).live is True


def test_a_long_stream_is_answered_in_order(
    served: RunningGrpcServer, repository: Path, rng: np.random.Generator
) -> None:
    """600 requests written as fast as tritonclient can (more than the 64 in flight and HTTP/2's first
    windows hold): every one answered, in order, each with its own input's output."""
    inputs = [rng.uniform(-1, 1, (int(rng.integers(1, 4)), 1, 8, 8)).astype(np.float32) for _ in range(600)]
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with triton.InferenceServerClient(served.grpc_address) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for index, x in enumerate(inputs):
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            client.async_stream_infer("digits", [tensor], request_id=str(index))
        received = [answers.get(timeout=60) for _ in inputs]
        client.stop_stream()
    assert [error for _, error in received] == [None] * len(inputs)
    assert [result.get_response().id for result, _ in received] == [str(i) for i in range(len(inputs))]
    entry = repository / "digits"
    for x, (result, _) in zip(inputs, received, strict=True):
        np.testing.assert_allclose(result.as_numpy("logits"), run_directly(entry, "folded", x), 1e-5, 1e-6)


def test_a_request_that_is_not_grpc_gets_415(served: RunningGrpcServer) -> None:
    answer = raw_call(served.grpc_address, "ServerLive", b"{}", content_type=b"application/json")
    assert (answer.status, answer.body.decode()) == (
        415,
        "this port serves gRPC (inference.GRPCInferenceService over HTTP/2); send gRPC calls here, or V2 "
        "HTTP/REST requests to the HTTP port\n",
    )


def test_a_connection_ends_gracefully_before_the_stream_cap(
    served: RunningGrpcServer, rng: np.random.Generator
) -> None:
    """More calls on one channel than STREAMS_PER_CONNECTION, 16 in flight at once: the server ends the
    connection with GOAWAY before zttp's cap (which would drop the calls in flight) and grpc carries on over a
    new one; every call is answered."""
    x = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    request = pb.ModelInferRequest.FromString(infer_request(x))
    calls = STREAMS_PER_CONNECTION + 500
    with grpc.insecure_channel(served.grpc_address) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: infer(request, timeout=30).model_name, range(calls)))
    assert answers == ["digits"] * calls


def test_more_calls_at_once_than_a_connection_carries(
    served: RunningGrpcServer, repository: Path, rng: np.random.Generator
) -> None:
    """400 calls in flight on one tritonclient aio channel (HTTP/2 allows the server 128 streams at once per
    connection; grpc queues the rest): every call is answered with its own output."""
    inputs = [rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32) for _ in range(400)]

    async def infer_all() -> list[Any]:
        client = triton_aio.InferenceServerClient(served.grpc_address)
        try:
            tensors = []
            for x in inputs:
                tensor = triton.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                tensors.append(tensor)
            return await asyncio.gather(*(client.infer("digits", [tensor]) for tensor in tensors))
        finally:
            await client.close()

    results = asyncio.run(infer_all())
    stacked = np.concatenate(inputs)
    expected = run_directly(repository / "digits", "folded", stacked)
    np.testing.assert_allclose(np.concatenate([r.as_numpy("logits") for r in results]), expected, 1e-5, 1e-6)


def quiet_stream_answered(pool: ThreadPoolExecutor, address: str, x: np.ndarray, request_id: str) -> Future[Any]:
    """A ModelStreamInfer stream (in `pool`) that sends one request and then goes quiet without closing; returns
    once that request's answer has arrived. The future's result is the whole RawAnswer, when the stream ends."""
    answered = threading.Event()
    body = framed(infer_request(x, request_id))
    call = pool.submit(
        raw_call, address, "ModelStreamInfer", body, close_request=False, timeout=60, first_data=answered
    )
    assert answered.wait(10)
    return call


def test_a_stream_open_at_shutdown_gets_goaway_then_unavailable_after_the_grace_period(
    repository: Path, rng: np.random.Generator
) -> None:
    """The server stops while a stream is open (its client quiet, not closed): GOAWAY (NO_ERROR, last stream 1)
    at once, the request already answered stays answered, and when BNFOLD_GRACEFUL_SHUTDOWN_S (1 s here) has
    passed the stream ends UNAVAILABLE with the message that says to send it again."""
    settings = Settings(repository=repository, grpc_transport="http2", equivalence_policy="off", graceful_shutdown_s=1)
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    with ThreadPoolExecutor(1) as pool:
        with running_grpc_server(settings) as running:
            call = quiet_stream_answered(pool, running.grpc_address, x, "before")
            stopping = time.monotonic()
        answer = call.result(timeout=60)
    assert answer.goaway == (0, 1)
    assert (answer.grpc_status, answer.grpc_message) == (14, STOPPING)
    assert answer.goaway_at - stopping < 0.9  # before the grace period ends
    assert 1.0 <= answer.ended_at - stopping < 3.0  # the setting's 1 s, not a grace period of its own
    (message,) = answer.messages()
    response = pb.ModelStreamInferResponse.FromString(message)
    assert response.infer_response.id == "before"
    expected = run_directly(repository / "digits", "folded", x)
    np.testing.assert_allclose(logits_of(response.infer_response.SerializeToString()), expected, 1e-5, 1e-6)


def test_a_second_sigint_ends_the_calls_in_progress_at_once(repository: Path, rng: np.random.Generator) -> None:
    """SIGINT, then SIGINT again (uvicorn's forced exit) with a 30 s grace period: the open stream ends
    UNAVAILABLE within seconds, not when the grace period ends."""
    settings = Settings(repository=repository, grpc_transport="http2", equivalence_policy="off", graceful_shutdown_s=30)
    x = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    with ThreadPoolExecutor(1) as pool, running_grpc_server(settings) as running:
        call = quiet_stream_answered(pool, running.grpc_address, x, "before")
        running.server.handle_exit(signal.SIGINT, None)
        stopping = time.monotonic()
        time.sleep(0.5)
        running.server.handle_exit(signal.SIGINT, None)
        answer = call.result(timeout=60)
    assert (answer.goaway, answer.grpc_status, answer.grpc_message) == ((0, 1), 14, STOPPING)
    assert answer.ended_at - stopping < 5.0
    assert [pb.ModelStreamInferResponse.FromString(m).infer_response.id for m in answer.messages()] == ["before"]
