"""Dynamic batching against a real server: merged requests get exactly the outputs of their own unbatched
onnxruntime runs, the batch metrics prove the merging, and a request that fails inside onnxruntime fails alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bnfold.service.runtime import SessionConfig, session_options
from bnfold.service.settings import Settings
from tests.load.concurrent import post_concurrently
from tests.load.lookup_model import VOCABULARY, WIDTH, reference, write_lookup_entry
from tests.prometheus_text import metric_sum
from tests.service.builders import reference_logits, write_entry
from tests.service.oracle import json_request
from tests.service.server import RunningServer, running_server

REQUESTS = 24


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("batching")
    weights = write_entry(root, "digits", rng)[0]
    table = write_lookup_entry(root, "lookup", rng)
    return root, {"digits": weights, "lookup": table}


@pytest.fixture(scope="module")
def server(repository: tuple[Path, dict]) -> Iterator[RunningServer]:
    """Batching with a 50 ms window, so concurrent requests are merged on a slow machine too."""
    settings = Settings(repository=repository[0], equivalence_policy="off", max_batch_delay_ms=50)
    with running_server(settings) as running:
        yield running


def delta(before: str, after: str, name: str, **labels: str) -> float:
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


def unbatched(entry: Path, x: np.ndarray) -> np.ndarray:
    """The folded variant run alone on x, with the service's own session options."""
    options = session_options(SessionConfig(1, 1, "all"))
    session = ort.InferenceSession(str(entry / "folded.onnx"), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def test_concurrent_requests_are_merged_and_get_their_own_outputs(
    server: RunningServer, repository: tuple[Path, dict], rng: np.random.Generator
) -> None:
    root, weights = repository
    inputs = [rng.normal(size=(int(rng.integers(1, 4)), 1, 8, 8)).astype(np.float32) for _ in range(REQUESTS)]
    before = server.client.get("/metrics").text
    responses = post_concurrently(server.url, "/v2/models/digits/infer", [json_request(x) for x in inputs])
    after = server.client.get("/metrics").text

    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        assert output["shape"] == [len(x), 3]
        got = np.asarray(output["data"], np.float32).reshape(len(x), 3)
        np.testing.assert_array_equal(got, unbatched(root / "digits", x))
        np.testing.assert_allclose(got, reference_logits(weights["digits"], x), rtol=1e-4, atol=1e-5)

    labels = {"model": "digits", "variant": "folded"}
    runs = delta(before, after, "bnfold_batch_requests_count", **labels)
    merged = delta(before, after, "bnfold_batch_requests_sum", **labels)
    samples = delta(before, after, "bnfold_batch_samples_sum", **labels)
    assert merged == REQUESTS and samples == sum(len(x) for x in inputs)
    assert runs < REQUESTS / 2, f"{REQUESTS} concurrent requests took {runs} runs: merging did not happen"


def test_a_request_failing_inside_onnxruntime_fails_alone(
    server: RunningServer, repository: tuple[Path, dict], rng: np.random.Generator
) -> None:
    table = repository[1]["lookup"]
    good = [rng.integers(0, VOCABULARY, (2, WIDTH)).astype(np.int64) for _ in range(9)]
    bad = np.array([[0, 1, 2, VOCABULARY + 5]], np.int64)  # valid INT64 of the right shape; out of the table
    bodies = [_ids_request(ids) for ids in good[:5]] + [_ids_request(bad)] + [_ids_request(ids) for ids in good[5:]]
    before = server.client.get("/metrics").text
    responses = post_concurrently(server.url, "/v2/models/lookup/infer", bodies)
    after = server.client.get("/metrics").text

    failed = responses.pop(5)
    assert failed.status_code == 500
    assert failed.json()["error"].startswith("onnxruntime failed on model 'lookup' (folded): ")
    assert "indices element out of data bounds, idx=15" in failed.json()["error"]
    for ids, response in zip(good, responses, strict=True):
        assert response.status_code == 200, response.text
        got = np.asarray(response.json()["outputs"][0]["data"], np.float64).reshape(len(ids), 3)
        np.testing.assert_allclose(got, reference(table, ids), rtol=1e-6, atol=1e-6)
    labels = {"model": "lookup", "variant": "folded"}
    assert delta(before, after, "bnfold_batch_requests_sum", **labels) == len(good)  # the bad one never ran


def _ids_request(ids: np.ndarray) -> dict:
    return {"inputs": [{"name": "ids", "datatype": "INT64", "shape": list(ids.shape), "data": ids.ravel().tolist()}]}


def test_batching_off_runs_every_request_alone(repository: tuple[Path, dict], rng: np.random.Generator) -> None:
    root = repository[0]
    settings = Settings(repository=root, equivalence_policy="off", dynamic_batching=False)
    inputs = [rng.normal(size=(1, 1, 8, 8)).astype(np.float32) for _ in range(8)]
    with running_server(settings) as running:
        responses = post_concurrently(running.url, "/v2/models/digits/infer", [json_request(x) for x in inputs])
        text = running.client.get("/metrics").text
    for x, response in zip(inputs, responses, strict=True):
        got = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(1, 3)
        np.testing.assert_array_equal(got, unbatched(root / "digits", x))
    assert metric_sum(text, "bnfold_batch_requests_count", model="digits", variant="folded") == 0
    assert metric_sum(text, "bnfold_requests_total", model="digits", variant="folded", status="200") == len(inputs)
