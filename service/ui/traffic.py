"""Live traffic figures from the service's own Prometheus counters, over a sliding window.

Each call of `TrafficWindow.figures()` reads the counters (requests by model/variant/status, the latency
histogram) and compares them with a snapshot taken about `window_s` seconds earlier (the service's start
until then): requests per second = Δrequests / Δt, latency percentiles estimated from the Δ of the histogram
buckets as Prometheus' histogram_quantile does (linear within the bucket that holds the rank q·n). Snapshots
are kept at most one per second, for at most `keep_s`, so many pollers cost no more than one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bnfold.service.metrics import ServiceMetrics

Key = tuple[str, str]  # (model, variant)
QUANTILES = {"p50_ms": 0.5, "p90_ms": 0.9, "p99_ms": 0.99}


@dataclass
class Totals:
    """Cumulative figures of one model and variant at one instant."""

    requests: float = 0.0
    failures: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (s) -> cumulative count


Snapshot = dict[Key, Totals]


def read_totals(metrics: ServiceMetrics) -> Snapshot:
    """The request counter and latency histogram of every model and variant, now."""
    totals: Snapshot = {}
    for sample in (s for family in metrics.requests.collect() for s in family.samples):
        if sample.name.endswith("_total"):
            entry = totals.setdefault((sample.labels["model"], sample.labels["variant"]), Totals())
            entry.requests += sample.value
            entry.failures += sample.value if int(sample.labels["status"]) >= 400 else 0.0
    for sample in (s for family in metrics.latency.collect() for s in family.samples):
        if sample.name.endswith("_bucket"):
            entry = totals.setdefault((sample.labels["model"], sample.labels["variant"]), Totals())
            entry.buckets[float(sample.labels["le"])] = sample.value
    return totals


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of cumulative bucket counts (upper bound -> count), None without observations."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else lower
        lower, below = bound, count
    return lower


class TrafficWindow:
    """Requests per second and latency percentiles per model and variant over the last `window_s` seconds."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        window_s: float = 10.0,
        keep_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics, self.window_s, self.keep_s, self.clock = metrics, window_s, keep_s, clock
        self.snapshots: deque[tuple[float, Snapshot]] = deque([(clock(), read_totals(metrics))])

    def figures(self) -> dict[Key, dict[str, Any]]:
        now, current = self.clock(), read_totals(self.metrics)
        then, previous = self._reference(now)
        if now - self.snapshots[-1][0] >= 1.0:
            self.snapshots.append((now, current))
        while len(self.snapshots) > 1 and now - self.snapshots[0][0] > self.keep_s:
            self.snapshots.popleft()
        return {
            key: _delta(totals, previous.get(key, Totals()), max(now - then, 1e-9)) for key, totals in current.items()
        }

    def _reference(self, now: float) -> tuple[float, Snapshot]:
        """The newest snapshot at least `window_s` old, else the oldest one kept."""
        chosen = self.snapshots[0]
        for snapshot in self.snapshots:
            if now - snapshot[0] >= self.window_s:
                chosen = snapshot
        return chosen


def _delta(current: Totals, previous: Totals, seconds: float) -> dict[str, Any]:
    window = {bound: count - previous.buckets.get(bound, 0.0) for bound, count in current.buckets.items()}
    figures: dict[str, Any] = {
        "requests": int(current.requests),
        "failures": int(current.failures),
        "rps": round((current.requests - previous.requests) / seconds, 3),
        "window_s": round(seconds, 1),
    }
    for name, q in QUANTILES.items():
        value = histogram_quantile(q, window)
        figures[name] = None if value is None else round(value * 1000, 3)
    return figures
