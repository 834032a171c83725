"""Per-version serving statistics in the shape of Triton's statistics extension (`GET /v2/models/{m}/stats`).

One `VersionUsage` per variant of a loaded model, created with the model (a reload starts from zero, as a
new model instance does in Triton). Durations are (count, total ns) pairs:

    success         requests answered by this version: body decoded → response encoded
    fail            requests to this (ready) version that failed after it was resolved: 400/413/422/500
    queue           per call of this version: waiting for a run slot / the dynamic batcher / a worker thread
    compute_input   per answered request: decoding the inputs (JSON or binary tensor data) into arrays
    compute_infer   per call of this version: the onnxruntime run it was part of (a merged run counts for
                    each call merged into it)
    compute_output  per answered request: selecting and encoding the outputs
    inference_count samples (axis 0) of the successful requests; execution_count onnxruntime runs

A checked default request runs both variants: each variant counts its own call (queue, compute_infer,
executions); only the variant that answered counts the request (success, compute_input/output, samples).
`batch_stats` has one entry per executed batch size (samples per run); its compute_input / compute_output
are the merge (concatenate) and split times of the batcher, 0 ns for runs of a single call.

Every update is a few integer additions made on the event loop's thread (no lock): the runners record after
their await returns, the handlers when the response is built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    """A Triton `$duration_stat`: how many times a statistic was collected and the total nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchUsage:
    """Runs of one batch size: merge, run and split durations."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


INFERENCE_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass(slots=True)
class VersionUsage:
    """Counters of one version (variant) of one loaded model."""

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchUsage] = field(default_factory=dict)

    def record_execution(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One onnxruntime run of `rows` samples (merge, run and split times)."""
        self.execution_count += 1
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchUsage()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)

    def record_call(self, queue_ns: int, infer_ns: int) -> None:
        """One call of this version: its wait before running and the run it was part of."""
        self.queue.add(queue_ns)
        self.compute_infer.add(infer_ns)

    def record_alone(self, rows: int, queue_ns: int, infer_ns: int) -> None:
        """A call that was its own run (no batcher, or an inline run)."""
        self.record_execution(rows, 0, infer_ns, 0)
        self.record_call(queue_ns, infer_ns)

    def record_success(self, samples: int, total_ns: int, input_ns: int, output_ns: int) -> None:
        """A request this version answered."""
        self.inference_count += samples
        self.success.add(total_ns)
        self.compute_input.add(input_ns)
        self.compute_output.add(output_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int) -> None:
        """A request to this version that failed after the model was resolved."""
        self.fail.add(total_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def to_triton(self, name: str, version: str) -> dict[str, Any]:
        """The Triton `$model_stat` object of this version."""
        inference = {key: getattr(self, key).to_json() for key in INFERENCE_FIELDS}
        inference["cache_hit"] = Duration().to_json()  # no response cache
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": inference,
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": batch.compute_input.to_json(),
                    "compute_infer": batch.compute_infer.to_json(),
                    "compute_output": batch.compute_output.to_json(),
                }
                for size, batch in sorted(self.batches.items())
            ],
        }
