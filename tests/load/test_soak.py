"""A small soak against a real `bnfold serve` process: 2,000 requests at concurrency 32 across models and
variants, zero errors, every answer right, resident memory growth measured (the 20,000-request soak is
bench/memory_soak.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.load.concurrent import post_concurrently
from tests.load.serve_process import serve_process
from tests.service.builders import Weights, reference_logits, write_entry
from tests.service.oracle import json_request

REQUESTS, CONCURRENCY, WARMUP = 2000, 32, 300
PATHS = ("/v2/models/{m}/infer", "/v2/models/{m}/versions/folded/infer", "/v2/models/{m}/versions/unfolded/infer")


def workload(rng: np.random.Generator, count: int, models: list[str]) -> list[tuple[str, str, np.ndarray]]:
    """(model, path, input) triples cycling through models and variants, batch 1–4."""
    return [
        (model, PATHS[i % 3].format(m=model), rng.uniform(-1, 1, (1 + i % 4, 1, 8, 8)).astype(np.float32))
        for i, model in ((i, models[i % len(models)]) for i in range(count))
    ]


def send(url: str, work: list[tuple[str, str, np.ndarray]], weights: dict[str, Weights]) -> int:
    """POST every request (grouped by path), check each answer against the float64 reference; errors."""
    errors = 0
    for path in sorted({path for _, path, _ in work}):
        items = [(model, x) for model, p, x in work if p == path]
        responses = post_concurrently(url, path, [json_request(x) for _, x in items], CONCURRENCY)
        for (model, x), response in zip(items, responses, strict=True):
            if response.status_code != 200:
                errors += 1
                continue
            got = np.reshape(response.json()["outputs"][0]["data"], (len(x), 3))
            np.testing.assert_allclose(got, reference_logits(weights[model], x), rtol=1e-4, atol=1e-5)
    return errors


@pytest.mark.timeout(120)
def test_soak_2000_requests_no_errors_bounded_memory(tmp_path: Path, rng: np.random.Generator) -> None:
    weights = {name: write_entry(tmp_path, name, rng)[0] for name in ("digits", "second")}
    models = sorted(weights)
    with serve_process(tmp_path) as server:
        assert send(server.url, workload(rng, WARMUP, models), weights) == 0
        rss_warm = server.rss_bytes()
        assert send(server.url, workload(rng, REQUESTS, models), weights) == 0
        rss_after = server.rss_bytes()
    growth = rss_after / rss_warm - 1
    print(f"soak: RSS {rss_warm / 2**20:.1f} MiB after warm-up, {rss_after / 2**20:.1f} MiB after {REQUESTS}")
    assert growth < 0.10, f"resident memory grew {growth:.1%} over {REQUESTS} requests"
