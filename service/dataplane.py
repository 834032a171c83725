"""The transport-agnostic data plane: resolves models and variants, runs them, checks equivalence, counts.

HTTP routes only translate requests into these calls; every failure is a `ServiceError` carrying its status.

Variant choice: a request that names a version runs exactly that variant. A default (unversioned) request runs
folded — or unfolded while folded is degraded — and, when the equivalence policy picks it, both variants on
the same input; a check out of tolerance is logged with the request id, counted, and referred to the rounding
referee (bnfold.service.referee). Explained by float32 rounding, it changes nothing else; confirmed as a
defect (or with the referee off), and with `failover_on_mismatch`, folded is marked degraded, the offending
sample is kept for re-verification, and the request is answered by unfolded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Sized
from dataclasses import dataclass, field

from bnfold.contract.agreement import Tolerance
from bnfold.messages import first_line
from bnfold.service.equivalence import Equivalence, compare
from bnfold.service.errors import InferenceError
from bnfold.service.metrics import ServiceMetrics
from bnfold.service.model import Registry, ServedModel
from bnfold.service.referee import referee
from bnfold.service.runtime import Tensors, rows_of
from bnfold.service.settings import Settings

log = logging.getLogger("bnfold.service")
Timed = tuple[Tensors, float]  # outputs and the run's seconds
MAX_OFFENDING = 16  # offending samples kept per model for re-verification


@dataclass
class Outcome:
    """The result of running a model for one request."""

    outputs: Tensors
    variant: str
    equivalence: Equivalence | None = None
    failed_over: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    by_variant: dict[str, Tensors] = field(default_factory=dict)  # every variant's outputs (both on checks)


class DataPlane:
    """Runs models of a registry under the settings' equivalence policy and records metrics."""

    def __init__(self, registry: Registry, settings: Settings, metrics: ServiceMetrics) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self._random = random.Random()
        # What tells a request it is the only one in progress (then the batcher need not queue it): uvicorn's
        # set of HTTP request tasks — created as each request head is parsed, before any of them runs — set by
        # the server that serves this plane; the same set of the HTTP/2 gRPC server (its calls are uvicorn
        # tasks too, less its open streams, whose requests are counted one by one); and the gRPC inference calls
        # in progress (the grpcio server's calls, and every streamed request). Without the HTTP set (an app not run
        # by bnfold's server), no request counts as alone.
        self.http_requests: Sized | None = None
        self.grpc_requests: Sized = ()
        self.grpc_stream_tasks = 0  # open streams among grpc_requests (their requests are in grpc_calls)
        self.grpc_calls = 0

    def wants_check(self) -> bool:
        """Whether a default request is checked against unfolded under the policy."""
        policy = self.settings.equivalence_policy
        if policy == "always":
            return True
        return policy == "sample" and self._random.random() < self.settings.equivalence_sample_rate

    async def execute(
        self, model: ServedModel, version: str | None, inputs: Tensors, request_id: str | None, check: bool
    ) -> Outcome:
        """Run the addressed variant, or the default one (with a check against unfolded when `check`; a check
        logs the request id, a new one when the request has none)."""
        if version is None and check:
            return await self._run_checked(model, inputs, request_id or new_request_id())
        variant = model.variant(version)
        outputs, seconds = await self._run(model, variant.name, inputs)
        failed_over = version is None and variant.name == "unfolded"
        if failed_over:
            self.metrics.failovers.labels(model.name).inc()
        return Outcome(outputs, variant.name, None, failed_over, {variant.name: seconds})

    def alone(self) -> bool:
        """Whether the request being run is the only one the server has in progress: HTTP requests and gRPC
        calls together (the caller counts itself) are at most one."""
        if self.http_requests is None:
            return False
        grpc_tasks = len(self.grpc_requests) - self.grpc_stream_tasks
        return len(self.http_requests) + grpc_tasks + self.grpc_calls <= 1

    async def _run(self, model: ServedModel, variant: str, inputs: Tensors) -> Timed:
        start = time.perf_counter()
        try:
            outputs = await model.variants[variant].runner.run(inputs, self.alone())
        except Exception as error:  # onnxruntime raises private exception types
            raise _inference_error(model.name, variant, error) from None
        return outputs, self._observe_run(model.name, variant, start)

    def _run_inline(self, model: ServedModel, variant: str, inputs: Tensors) -> Timed:
        """`_run` without leaving the calling task: only for runs within the inline budget."""
        start = time.perf_counter()
        try:
            outputs = model.variants[variant].runner.run_inline(inputs)
        except Exception as error:  # onnxruntime raises private exception types
            raise _inference_error(model.name, variant, error) from None
        return outputs, self._observe_run(model.name, variant, start)

    def _observe_run(self, model: str, variant: str, start: float) -> float:
        seconds = time.perf_counter() - start
        self.metrics.observe_run(model, variant, seconds)
        return seconds

    async def _run_both(self, model: ServedModel, inputs: Tensors) -> tuple[Timed, Timed]:
        """Folded (through its batcher) and unfolded on the same input.

        When the unfolded run is within the inline budget it runs right after folded returns, in the same
        task step: the checked request then completes in the loop turn its folded batch completes, like its
        unchecked neighbours. (Run as a second task, it completed turns later; in a closed loop each late
        client sends its next request alone and splits the batcher's waves — 1 % sampling then cost 8 % of
        throughput on digits_resnet at 32 in flight.) Costlier unfolded runs go concurrently with folded.
        """
        if model.variants["unfolded"].runner.runs_inline(rows_of(inputs)):
            folded = await self._run(model, "folded", inputs)
            return folded, self._run_inline(model, "unfolded", inputs)
        both = await asyncio.gather(self._run(model, "folded", inputs), self._run(model, "unfolded", inputs))
        return both[0], both[1]

    async def run_both(self, model: ServedModel, inputs: Tensors) -> tuple[Tensors, Tensors]:
        """Folded and unfolded outputs on the same input (as a checked request runs them)."""
        (folded, _), (unfolded, _) = await self._run_both(model, inputs)
        return folded, unfolded

    async def _run_checked(self, model: ServedModel, inputs: Tensors, request_id: str) -> Outcome:
        model.require_ready()
        (folded, t_folded), (unfolded, t_unfolded) = await self._run_both(model, inputs)
        result = await self.judge(model, inputs, folded, unfolded)
        model.stats.record(result, request_id)
        self.metrics.observe_check(model.name, result, model.stats.max_abs_diff_seen, model.stats.max_rel_diff_seen)
        seconds = {"folded": t_folded, "unfolded": t_unfolded}
        if result.mismatch:
            self._on_mismatch(model, result, request_id)
            if result.defect:
                keep_offending(model, inputs, result)
        elif result.inconclusive:
            log.info("equivalence check on model %r, request %s: %s", model.name, request_id, result.describe())
        both = {"folded": folded, "unfolded": unfolded}
        if model.folded_degraded:
            self.metrics.failovers.labels(model.name).inc()
            return Outcome(unfolded, "unfolded", result, True, seconds, both)
        return Outcome(folded, "folded", result, False, seconds, both)

    async def judge(
        self, model: ServedModel, inputs: Tensors, folded: Tensors, unfolded: Tensors, referee_on: bool | None = None
    ) -> Equivalence:
        """The contract's verdict on folded against unfolded; a disagreement is ruled on by the referee (when
        `referee_on`, by default the setting `equivalence_referee`)."""
        manifest = model.require_ready()
        tolerance, classifier = manifest.tolerance, manifest.task == "classification"
        result = compare(folded, unfolded, tolerance.atol, tolerance.rtol, classifier)
        if referee_on is None:
            referee_on = self.settings.equivalence_referee
        if not result.mismatch or not referee_on:
            return result

        async def run_unfolded(moved: Tensors) -> Tensors:
            return (await self._run(model, "unfolded", moved))[0]

        limits = Tolerance(tolerance.atol, tolerance.rtol)
        return result.ruled(await referee(run_unfolded, inputs, folded, unfolded, limits, classifier))

    def _on_mismatch(self, model: ServedModel, result: Equivalence, request_id: str) -> None:
        log.warning("equivalence mismatch on model %r, request %s: %s", model.name, request_id, result.describe())
        if result.rounding:
            self.metrics.rounding_explained.labels(model.name).inc()
            return
        self.metrics.confirmed_defects.labels(model.name).inc()
        if self.settings.failover_on_mismatch and not model.folded_degraded:
            model.folded_degraded = f"mismatch on request {request_id}: {result.describe()}"
            self.metrics.degraded.labels(model.name).set(1)
            log.error("model %r: folded variant degraded, default requests now go to unfolded", model.name)

    def observe(self, model: str, variant: str, status: int, started: float | None) -> None:
        """Count one finished request (latency only for successes)."""
        seconds = None if started is None else time.perf_counter() - started
        self.metrics.observe_request(model, variant, status, seconds)

    def model_label(self, name: str) -> str:
        """A metrics label that cannot explode: known model names only."""
        return name if name in self.registry.models else "<unknown>"


def keep_offending(model: ServedModel, inputs: Tensors, result: Equivalence) -> None:
    """Keep the sample (axis-0 row) of the worst discrepancy, up to MAX_OFFENDING per model."""
    if len(model.offending) >= MAX_OFFENDING:
        return
    worst = max(result.outputs, key=lambda output: output.discrepancy.max_abs).discrepancy.where
    row = worst[0] if worst else 0
    if all(array.ndim >= 1 and array.shape[0] > row for array in inputs.values()):
        model.offending.append({name: array[row : row + 1].copy() for name, array in inputs.items()})
    else:
        model.offending.append({name: array.copy() for name, array in inputs.items()})


def _inference_error(model: str, variant: str, error: Exception) -> InferenceError:
    log.exception("onnxruntime failed on model %r, variant %s", model, variant)
    return InferenceError(f"onnxruntime failed on model {model!r} ({variant}): {first_line(error, limit=None)}")


def new_request_id() -> str:
    """16 random hex digits."""
    return os.urandom(8).hex()
