"""Prometheus metrics of one app instance (own CollectorRegistry, so several apps can live in one process).

The per-request metrics keep their labelled children in a dict: `Counter.labels(...)` validates and looks
the labels up under a lock on every call, which cost more than the increment itself. Label values are
bounded (known model names or "<unknown>", the variants, the statuses the service answers), so the dicts are.

With `bnfold serve --workers N` (PROMETHEUS_MULTIPROC_DIR set, service/workers.py) every worker writes its values
to that directory and `render` reports all workers: counters and histograms summed, each gauge as its
`multiprocess_mode` says (ignored in a single process).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from bnfold.service.equivalence import Equivalence

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ServiceMetrics:
    """Requests/failures by model, variant and status; latencies; equivalence checks and diffs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "variant", "status")
        self.requests = Counter("bnfold_requests", "Inference requests", labels, registry=self.registry)
        self.failures = Counter("bnfold_request_failures", "Failed inference requests", labels, registry=self.registry)
        self.latency = Histogram(
            "bnfold_request_latency_seconds",
            "Inference request latency, body read to response encoded",
            ("model", "variant"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.run_latency = Histogram(
            "bnfold_session_run_seconds",
            "onnxruntime run time of one variant",
            ("model", "variant"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "bnfold_batch_requests",
            "Requests merged into one onnxruntime run by the dynamic batcher (count = runs, sum = requests)",
            ("model", "variant"),
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_samples = Histogram(
            "bnfold_batch_samples",
            "Samples (axis 0) of one onnxruntime run made by the dynamic batcher",
            ("model", "variant"),
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._equivalence_metrics()
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._run_children: dict[tuple[str, str], Any] = {}
        self._batch_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def _equivalence_metrics(self) -> None:
        model = ("model",)
        registry = self.registry
        self.checks = Counter("bnfold_equivalence_checks", "Equivalence checks made", model, registry=registry)
        self.mismatches = Counter("bnfold_equivalence_mismatches", "Checks out of tolerance", model, registry=registry)
        self.inconclusive = Counter(
            "bnfold_equivalence_inconclusive",
            "Checks whose unfolded reference output was not finite (neither agreement nor mismatch)",
            model,
            registry=registry,
        )
        self.rounding_explained = Counter(
            "bnfold_equivalence_rounding_explained",
            "Mismatches the referee explained by float32 rounding (no fail-over)",
            model,
            registry=registry,
        )
        self.confirmed_defects = Counter(
            "bnfold_equivalence_confirmed_defects",
            "Mismatches the referee confirmed as defects of folded (or could not rule on)",
            model,
            registry=registry,
        )
        self.reverifications = Counter(
            "bnfold_reverifications", "Re-verifications of folded by outcome", ("model", "outcome"), registry=registry
        )
        self.failovers = Counter(
            "bnfold_failovers", "Requests answered by unfolded after a mismatch", model, registry=registry
        )
        # Across workers: the largest Δ any worker saw; ready only when ready in every live worker; degraded
        # when degraded in any live worker.
        self.max_abs = Gauge(
            "bnfold_equivalence_max_abs_diff", "Largest max |Δ| seen", model, registry=registry, multiprocess_mode="max"
        )
        self.max_rel = Gauge(
            "bnfold_equivalence_max_rel_diff",
            "Largest relative Δ seen",
            model,
            registry=registry,
            multiprocess_mode="max",
        )
        self.model_ready = Gauge(
            "bnfold_model_ready", "1 when the model is ready", model, registry=registry, multiprocess_mode="livemin"
        )
        self.degraded = Gauge(
            "bnfold_folded_degraded", "1 when folded is degraded", model, registry=registry, multiprocess_mode="livemax"
        )

    def observe_request(self, model: str, variant: str, status: int, seconds: float | None) -> None:
        children = self._request_children.get((model, variant, status))
        if children is None:
            failures = self.failures.labels(model, variant, str(status)) if status >= 400 else None
            requests = self.requests.labels(model, variant, str(status))
            children = (requests, failures, self.latency.labels(model, variant))
            self._request_children[model, variant, status] = children
        requests, failures, latency = children
        requests.inc()
        if failures is not None:
            failures.inc()
        if seconds is not None:
            latency.observe(seconds)

    def observe_run(self, model: str, variant: str, seconds: float) -> None:
        """One onnxruntime run of a variant."""
        child = self._run_children.get((model, variant))
        if child is None:
            child = self._run_children[model, variant] = self.run_latency.labels(model, variant)
        child.observe(seconds)

    def observe_check(self, model: str, result: Equivalence, max_abs_seen: float, max_rel_seen: float) -> None:
        self.checks.labels(model).inc()
        if result.mismatch:
            self.mismatches.labels(model).inc()
        if result.inconclusive:
            self.inconclusive.labels(model).inc()
        self.max_abs.labels(model).set(max_abs_seen)
        self.max_rel.labels(model).set(max_rel_seen)

    def observe_batch(self, model: str, variant: str, requests: int, samples: int) -> None:
        children = self._batch_children.get((model, variant))
        if children is None:
            children = (self.batch_requests.labels(model, variant), self.batch_samples.labels(model, variant))
            self._batch_children[model, variant] = children
        children[0].observe(requests)
        children[1].observe(samples)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: read every worker's values
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
