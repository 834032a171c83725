"""GET /v2/models[/{m}[/versions/{v}]]/stats in Triton's shape, counting exactly the requests sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from bnfold.service.settings import Settings
from tests.service.builders import write_entry
from tests.service.oracle import json_request
from tests.service.server import RunningServer, running_server

FIELDS = ["success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("stats")
    for name in ("counted", "merged"):
        write_entry(root, name, rng)
    with running_server(Settings(repository=root, equivalence_policy="off")) as running:
        yield running


def post(server: RunningServer, path: str, rows: int, rng: np.random.Generator) -> int:
    x = rng.uniform(-1, 1, (rows, 1, 8, 8)).astype(np.float32)
    return server.client.post(path, json=json_request(x)).status_code


def by_version(document: dict) -> dict[str, dict]:
    return {entry["version"]: entry for entry in document["model_stats"]}


def test_statistics_count_the_requests_sent_per_version(server: RunningServer, rng: np.random.Generator) -> None:
    before_ms = time.time_ns() // 1_000_000
    base = "/v2/models/counted"
    statuses = [post(server, f"{base}/versions/folded/infer", 2, rng) for _ in range(5)]
    statuses += [post(server, f"{base}/versions/unfolded/infer", 1, rng) for _ in range(3)]
    statuses += [post(server, f"{base}/infer", 3, rng) for _ in range(4)]  # default: folded
    assert statuses == [200] * 12
    wrong_shape = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [0.0, 1.0]}]}
    for version, times in (("folded", 2), ("unfolded", 1)):
        for _ in range(times):
            assert server.client.post(f"{base}/versions/{version}/infer", json=wrong_shape).status_code == 400
    x = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    for _ in range(2):  # checked: both variants run, folded answers
        response = server.client.post("/predict", json={"model": "counted", "variant": "both", "inputs": x.tolist()})
        assert response.status_code == 200
    after_ms = time.time_ns() // 1_000_000

    import tritonclient.http as httpclient

    document = httpclient.InferenceServerClient(server.address).get_inference_statistics("counted")
    assert document == server.client.get(f"{base}/stats").json()
    stats = by_version(document)
    assert list(stats) == ["folded", "unfolded"]
    folded, unfolded = stats["folded"], stats["unfolded"]
    counts = {v: {f: stats[v]["inference_stats"][f]["count"] for f in FIELDS} for v in stats}
    assert counts["folded"] == {
        "success": 11, "fail": 2, "queue": 11, "compute_input": 11, "compute_infer": 11, "compute_output": 11,
        "cache_hit": 0,
    }  # fmt: skip
    assert counts["unfolded"] == {
        "success": 3, "fail": 1, "queue": 5, "compute_input": 3, "compute_infer": 5, "compute_output": 3,
        "cache_hit": 0,
    }  # fmt: skip
    assert (folded["inference_count"], folded["execution_count"]) == (5 * 2 + 4 * 3 + 2, 11)
    assert (unfolded["inference_count"], unfolded["execution_count"]) == (3, 5)
    batches = {v: {b["batch_size"]: b["compute_infer"]["count"] for b in stats[v]["batch_stats"]} for v in stats}
    assert batches == {"folded": {1: 2, 2: 5, 3: 4}, "unfolded": {1: 5}}
    for entry in stats.values():
        assert entry["name"] == "counted" and before_ms <= entry["last_inference"] <= after_ms
        assert entry["inference_stats"]["success"]["ns"] > entry["inference_stats"]["compute_infer"]["ns"] > 0
        assert entry["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
    agreement = document["bnfold"]["counted"]
    assert agreement["equivalence"]["checks"] == 2 and agreement["default_version"] == "folded"

    versioned = server.client.get(f"{base}/versions/unfolded/stats").json()
    assert versioned["model_stats"] == [unfolded] and list(versioned["bnfold"]) == ["counted"]
    unknown = server.client.get(f"{base}/versions/7/stats")
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"error": "unknown version '7' of model 'counted'; versions are 'folded' and 'unfolded'"},
    )
    everything = server.client.get("/v2/models/stats").json()
    assert [(e["name"], e["version"]) for e in everything["model_stats"]] == [
        ("counted", "folded"), ("counted", "unfolded"), ("merged", "folded"), ("merged", "unfolded"),
    ]  # fmt: skip


def test_merged_runs_count_every_sample_once(server: RunningServer, rng: np.random.Generator) -> None:
    """Concurrent requests merged by the batcher: executions ≤ requests, samples executed = samples sent."""
    statuses: list[int] = []

    def send() -> None:
        for _ in range(10):
            statuses.append(post(server, "/v2/models/merged/versions/folded/infer", 1, rng))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 40
    folded = by_version(server.client.get("/v2/models/merged/stats").json())["folded"]
    assert folded["inference_count"] == 40 and folded["inference_stats"]["success"]["count"] == 40
    assert folded["inference_stats"]["queue"]["count"] == 40
    executed = sum(b["batch_size"] * b["compute_infer"]["count"] for b in folded["batch_stats"])
    runs = sum(b["compute_infer"]["count"] for b in folded["batch_stats"])
    assert executed == 40 and runs == folded["execution_count"] <= 40
