"""The serving benchmark's load generator against a real server: its requests are answered correctly, it
counts no more than the server answered, and its stability rule is perf_analyzer's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.http_load import Target, _stable, measure
from bench.serving_inputs import check_answers, model_requests
from bnfold.service.settings import Settings
from tests.service.builders import write_entry
from tests.service.server import running_server


def served_requests(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bnfold_requests_total" and sample.labels.get("status") == "200":
                return float(sample.value)
    return 0.0


def test_measure_counts_real_answered_requests(tmp_path: Path, rng: np.random.Generator) -> None:
    write_entry(tmp_path, "digits", rng)
    requests = model_requests(tmp_path, "digits")
    with running_server(Settings(repository=tmp_path, equivalence_policy="off")) as server:
        port = int(server.address.rsplit(":", 1)[1])
        check_answers(port, requests)  # JSON and binary answers equal onnxruntime in process
        before = served_requests(server.client.get("/metrics").text)
        result = measure(Target(port, requests.binary), 4, window_s=0.2, max_windows=5, warmup_s=0.1)
        served = served_requests(server.client.get("/metrics").text) - before
    assert result.errors == 0 and 3 <= len(result.windows) <= 5
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms
    measured = sum(result.windows) * 0.2  # responses inside the windows (≈, window lengths are ≥ 0.2 s)
    assert measured <= served, (measured, served)


def test_stability_rule() -> None:
    assert _stable([100.0, 95.0, 105.0], 3, 0.10)
    assert not _stable([100.0, 80.0, 105.0], 3, 0.10)
    assert not _stable([100.0, 100.0], 3, 0.10)
    assert _stable([10.0, 100.0, 101.0, 99.0], 3, 0.10)
