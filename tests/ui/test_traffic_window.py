"""The dashboard's live figures: requests per second and latency percentiles over a window, from the
service's own Prometheus counters (a real ServiceMetrics, a controlled clock)."""

from __future__ import annotations

import numpy as np
import pytest

from bnfold.service.metrics import LATENCY_BUCKETS, ServiceMetrics
from bnfold.service.ui.traffic import TrafficWindow, histogram_quantile


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def interpolated_quantile(q: float, latencies: np.ndarray) -> float:
    """histogram_quantile's rule written out: linear inside the bucket that holds the rank q·n."""
    bounds = np.asarray(LATENCY_BUCKETS)
    cumulative = np.asarray([(latencies <= b).sum() for b in bounds], np.float64)
    rank = q * len(latencies)
    i = int(np.searchsorted(cumulative, rank))
    lower, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], cumulative[i - 1])
    return float(lower + (bounds[i] - lower) * (rank - below) / (cumulative[i] - below))


def test_rates_and_percentiles_cover_only_the_window(rng: np.random.Generator) -> None:
    metrics, clock = ServiceMetrics(), Clock()
    window = TrafficWindow(metrics, window_s=10.0, clock=clock)
    early = rng.uniform(0.0002, 0.0009, 50)
    for seconds in early:
        metrics.observe_request("m", "folded", 200, float(seconds))
    clock.now += 10.0
    figures = window.figures()[("m", "folded")]
    assert (figures["requests"], figures["rps"], figures["window_s"]) == (50, 5.0, 10.0)
    assert figures["p50_ms"] == pytest.approx(1000 * interpolated_quantile(0.5, early), abs=1e-3)

    late = rng.uniform(0.003, 0.04, 80)
    for seconds in late:
        metrics.observe_request("m", "folded", 200, float(seconds))
    for _ in range(8):
        metrics.observe_request("m", "folded", 400, None)
    clock.now += 10.0
    figures = window.figures()[("m", "folded")]
    assert (figures["requests"], figures["failures"], figures["rps"]) == (138, 8, 8.8)  # 88 in the last 10 s
    for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
        assert figures[name] == pytest.approx(1000 * interpolated_quantile(q, late), abs=1e-3)


def test_a_variant_without_requests_in_the_window_has_no_percentiles() -> None:
    metrics, clock = ServiceMetrics(), Clock()
    metrics.observe_request("m", "unfolded", 200, 0.001)
    window = TrafficWindow(metrics, window_s=5.0, clock=clock)
    clock.now += 6.0
    figures = window.figures()[("m", "unfolded")]
    assert (figures["requests"], figures["rps"], figures["p50_ms"], figures["p99_ms"]) == (1, 0.0, None, None)
    assert histogram_quantile(0.5, {}) is None
    assert histogram_quantile(0.5, {0.001: 0.0, float("inf"): 4.0}) == 0.001  # all above the last bound
