"""A folded model with a hidden defect (it clips its input at ±2, invisible on the calibration batch in [-1, 1]):
the equivalence checks while serving catch it, count it, log it with the request id and fail over."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bnfold.service.dataplane import DataPlane
from bnfold.service.metrics import ServiceMetrics
from bnfold.service.model import Registry
from bnfold.service.settings import Settings
from tests.service.builders import Weights, build_graph, write_entry
from tests.service.oracle import json_request, run_directly
from tests.service.server import RunningServer, running_server


@pytest.fixture(scope="module")
def defective_repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("defective")
    weights = Weights.random(rng)
    write_entry(root, "clipped", rng, weights=weights, folded_model=build_graph(weights, folded=True, clip_input=2.0))
    return root


def in_range(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)


def out_of_range(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(5, 10, (2, 1, 8, 8)).astype(np.float32)


def sample(metrics_text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for metric in family.samples:
            if metric.name == name and all(metric.labels.get(k) == v for k, v in labels.items()):
                return float(metric.value)
    raise AssertionError(f"no sample {name} {labels} in /metrics")


@pytest.fixture
def failover_server(defective_repository: Path) -> Iterator[RunningServer]:
    with running_server(Settings(repository=defective_repository, equivalence_policy="always")) as running:
        yield running


def test_defect_passes_calibration_but_is_caught_while_serving(
    failover_server: RunningServer,
    defective_repository: Path,
    rng: np.random.Generator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = failover_server.client
    assert client.get("/v2/models/clipped/ready").status_code == 200
    fine = client.post("/v2/models/clipped/infer", json=json_request(in_range(rng))).json()
    assert (fine["model_version"], fine["parameters"]["bnfold_agree"]) == ("folded", True)

    x = out_of_range(rng)
    with caplog.at_level(logging.WARNING, logger="bnfold.service"):
        bad = client.post("/v2/models/clipped/infer", json=json_request(x, id="mismatch-1")).json()
    assert bad["model_version"] == "unfolded" and bad["parameters"]["bnfold_failed_over"] is True
    assert bad["parameters"]["bnfold_within_tolerance"] is False
    expected = run_directly(defective_repository / "clipped", "unfolded", x)
    np.testing.assert_allclose(np.reshape(bad["outputs"][0]["data"], (2, 3)), expected, rtol=1e-5, atol=1e-6)
    assert any("request mismatch-1" in record.getMessage() for record in caplog.records)

    metadata = client.get("/v2/models/clipped").json()
    assert metadata["default_version"] == "unfolded"
    assert metadata["folded_degraded"].startswith("mismatch on request mismatch-1: output 'logits'")
    assert client.get("/v2/models/clipped/ready").status_code == 200
    degraded = client.get("/v2/models/clipped/versions/folded/ready")
    assert degraded.status_code == 503 and "is degraded: mismatch on request mismatch-1" in degraded.json()["error"]
    after = client.post("/v2/models/clipped/infer", json=json_request(in_range(rng))).json()
    assert after["model_version"] == "unfolded" and after["parameters"]["bnfold_failed_over"] is True

    stats = client.get("/v2/models/clipped/stats").json()["bnfold"]["clipped"]["equivalence"]
    assert (stats["checks"], stats["mismatches"], stats["agreement_rate"]) == (3, 1, pytest.approx(2 / 3))
    assert (stats["confirmed_defects"], stats["rounding_explained"]) == (1, 0)
    assert bad["parameters"]["bnfold_rounding_explained"] is False
    assert stats["max_abs_diff_seen"] == pytest.approx(bad["parameters"]["bnfold_max_abs_diff"])


def test_metrics_after_a_mismatch(failover_server: RunningServer, rng: np.random.Generator) -> None:
    client = failover_server.client
    client.post("/v2/models/clipped/infer", json=json_request(in_range(rng)))
    client.post("/v2/models/clipped/infer", json=json_request(out_of_range(rng)))
    client.post("/v2/models/clipped/versions/folded/infer", json=json_request(in_range(rng)))
    client.post("/v2/models/clipped/infer", json={"inputs": []})
    client.post("/v2/models/nope/infer", json={"inputs": []})
    client.post("/v2/models/clipped/versions/v7/infer", json={"inputs": []})
    text = client.get("/metrics").text
    assert sample(text, "bnfold_requests_total", model="clipped", variant="folded", status="200") == 2
    assert sample(text, "bnfold_requests_total", model="clipped", variant="unfolded", status="200") == 1
    assert sample(text, "bnfold_request_failures_total", model="clipped", variant="default", status="400") == 1
    assert sample(text, "bnfold_request_failures_total", model="<unknown>", variant="default", status="404") == 1
    assert sample(text, "bnfold_request_failures_total", model="clipped", variant="<unknown>", status="404") == 1
    assert sample(text, "bnfold_request_latency_seconds_count", model="clipped", variant="folded") == 2
    # two checks, and the referee's two runs (input moved one ulp up and down) on the one mismatch
    assert sample(text, "bnfold_session_run_seconds_count", model="clipped", variant="unfolded") == 4
    assert sample(text, "bnfold_equivalence_checks_total", model="clipped") == 2
    assert sample(text, "bnfold_equivalence_mismatches_total", model="clipped") == 1
    assert sample(text, "bnfold_equivalence_confirmed_defects_total", model="clipped") == 1
    assert sample(text, "bnfold_failovers_total", model="clipped") == 1
    assert sample(text, "bnfold_equivalence_max_abs_diff", model="clipped") > 1e-3
    assert sample(text, "bnfold_folded_degraded", model="clipped") == 1
    assert sample(text, "bnfold_model_ready", model="clipped") == 1


@pytest.mark.parametrize(("policy", "failover"), [("always", False), ("off", True)])
def test_mismatch_without_failover_and_without_checks(
    defective_repository: Path, rng: np.random.Generator, policy: str, failover: bool
) -> None:
    settings = Settings(repository=defective_repository, equivalence_policy=policy, failover_on_mismatch=failover)
    with running_server(settings) as running:
        x = out_of_range(rng)
        body = running.client.post("/v2/models/clipped/infer", json=json_request(x)).json()
        assert body["model_version"] == "folded" and body["parameters"]["bnfold_failed_over"] is False
        assert body["parameters"]["bnfold_equivalence_checked"] is (policy == "always")
        assert body["parameters"].get("bnfold_agree") is (False if policy == "always" else None)
        stats = running.client.get("/v2/models/clipped/stats").json()["bnfold"]["clipped"]
        assert stats["folded_degraded"] is None
        assert stats["equivalence"]["mismatches"] == (1 if policy == "always" else 0)


@pytest.mark.parametrize(("rate", "expected"), [(0.0, 0), (1.0, 200)])
def test_sample_policy_checks_the_configured_fraction(defective_repository: Path, rate: float, expected: int) -> None:
    settings = Settings(repository=defective_repository, equivalence_policy="sample", equivalence_sample_rate=rate)
    plane = DataPlane(Registry([]), settings, ServiceMetrics())
    assert sum(plane.wants_check() for _ in range(200)) == expected


def test_sample_policy_rate_is_honoured_statistically(defective_repository: Path) -> None:
    settings = Settings(repository=defective_repository, equivalence_policy="sample", equivalence_sample_rate=0.25)
    plane = DataPlane(Registry([]), settings, ServiceMetrics())
    checked = sum(plane.wants_check() for _ in range(4000))
    assert 800 < checked < 1200  # 1000 ± 6.9 σ
