"""onnxruntime sessions with pinned options, behind the `Runner` interface the data plane calls.

`Runner.run` is the one seam between the data plane and a model: the dynamic batcher (service.batching) is another
`Runner` that wraps a `SessionRunner`, merges concurrent calls along axis 0 and splits the results, without
the data plane or the HTTP layer changing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
import numpy as np
import onnxruntime as ort

from bnfold.messages import first_line
from bnfold.service.datatypes import ORT_TO_V2
from bnfold.service.repository import EntryError, TensorSpec
from bnfold.service.usage import VersionUsage

Tensors = dict[str, np.ndarray]

OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
PROVIDER = "CPUExecutionProvider"


class Runner(Protocol):
    """Runs one model variant: inputs by name -> every output by name."""

    async def run(self, inputs: Mapping[str, np.ndarray], alone: bool = False) -> Tensors:
        """Every output of the model on `inputs`; `alone`: the server has no other request in progress."""
        ...

    def runs_inline(self, rows: int) -> bool:
        """Whether a run of `rows` samples is within the inline budget (executes on the loop's thread)."""
        ...

    def run_inline(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Run now, in the calling thread, unbatched (only for runs where `runs_inline` holds)."""
        ...


@dataclass(frozen=True)
class SessionConfig:
    """The pinned session options; recorded in the model's metadata as they are."""

    intra_op_threads: int
    inter_op_threads: int
    graph_optimization: str
    execution_mode: str = "sequential"
    provider: str = PROVIDER

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def session_options(config: SessionConfig) -> ort.SessionOptions:
    """SessionOptions pinned to the config: threads, ORT_SEQUENTIAL, optimisation level, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = OPTIMIZATION_LEVELS[config.graph_optimization]
    # Idle sessions must not busy-wait on cores shared with other sessions.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def open_session(path: Path, config: SessionConfig) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider; EntryError when onnxruntime cannot load the file."""
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(config), providers=[PROVIDER])
    except Exception as error:  # onnxruntime raises several private exception types
        raise EntryError(f"onnxruntime cannot load {path.name}: {first_line(error, limit=None)}") from None


def check_signature(session: ort.InferenceSession, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """EntryError unless the graph's inputs/outputs have the declared names, datatypes and ranks."""
    for kind, declared, actual in (
        ("input", inputs, session.get_inputs()),
        ("output", outputs, session.get_outputs()),
    ):
        if [spec.name for spec in declared] != [node.name for node in actual]:
            raise EntryError(
                f"graph {kind}s are {[node.name for node in actual]}, model.json declares "
                f"{[spec.name for spec in declared]}"
            )
        for spec, node in zip(declared, actual, strict=True):
            _check_node(kind, spec, node)


def _check_node(kind: str, spec: TensorSpec, node: Any) -> None:
    datatype = ORT_TO_V2.get(node.type, node.type)
    if datatype != spec.datatype:
        raise EntryError(f"graph {kind} {spec.name!r} is {datatype}, model.json declares {spec.datatype}")
    graph_shape = tuple(dim if isinstance(dim, int) else -1 for dim in node.shape)
    fixed_conflict = any(got not in (-1, want) for got, want in zip(graph_shape, spec.shape, strict=False))
    if len(graph_shape) != len(spec.shape) or fixed_conflict:
        raise EntryError(f"graph {kind} {spec.name!r} has shape {list(graph_shape)}, model.json {spec.shape}")


# A run whose estimated time (samples × seconds per sample measured at load) is within the inline budget
# (BNFOLD_INLINE_RUN_BUDGET_MS) executes on the event loop's thread: for sub-millisecond models the hop to a
# worker thread — and the wait for the GIL to come back (up to the 5 ms switch interval while the loop is
# busy) — costs more than the run.


def rows_of(inputs: Mapping[str, np.ndarray]) -> int:
    """Samples of a call: the largest axis-0 size among its inputs (1 for scalars)."""
    rows: int | None = None
    for value in inputs.values():
        shape = value.shape if isinstance(value, np.ndarray) else np.shape(value)
        if shape and (rows is None or shape[0] > rows):
            rows = shape[0]
    return 1 if rows is None else rows


class SessionRunner:
    """A `Runner` on one InferenceSession: cheap runs inline, others in a worker thread (ORT releases the GIL)."""

    def __init__(
        self, session: ort.InferenceSession, gate: threading.Semaphore | None = None, inline_budget_s: float = 0.0
    ) -> None:
        self.session = session
        self.inline_budget_s = inline_budget_s
        self.output_names = [node.name for node in session.get_outputs()]
        # Shared by every session of the process: at most `concurrent_runs` onnxruntime runs at once.
        self.gate: AbstractContextManager[Any] = gate if gate is not None else nullcontext()
        self.seconds_per_sample: float | None = None  # measured by `timed_run` at load
        self.usage: VersionUsage | None = None  # set when this runner serves unbatched (service.usage)

    def run_sync(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        with self.gate:
            return self.execute(inputs)

    def execute(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Run in the calling thread without the gate and without recording usage."""
        values = self.session.run(self.output_names, dict(inputs))
        return dict(zip(self.output_names, values, strict=True))

    def run_inline(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Run in the calling thread without the gate (for runs within the inline budget only)."""
        if self.usage is None:
            return self.execute(inputs)
        start = time.perf_counter_ns()
        outputs = self.execute(inputs)
        self.usage.record_alone(rows_of(inputs), 0, time.perf_counter_ns() - start)
        return outputs

    def _run_gated_timed(self, inputs: Mapping[str, np.ndarray]) -> tuple[Tensors, int, int]:
        """run_sync plus the perf_counter_ns at which the run started (gate acquired) and ended."""
        with self.gate:
            started = time.perf_counter_ns()
            outputs = self.execute(inputs)
            return outputs, started, time.perf_counter_ns()

    def timed_run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """run_sync, recording seconds per sample (from a second run when the first, which allocates, was
        fast; a slow first run is already an upper bound that keeps the model off the inline path)."""
        start = time.perf_counter()
        outputs = self.run_sync(inputs)
        seconds = time.perf_counter() - start
        if seconds < 0.05:
            start = time.perf_counter()
            self.run_sync(inputs)
            seconds = time.perf_counter() - start
        self.seconds_per_sample = seconds / max(1, rows_of(inputs))
        return outputs

    def runs_inline(self, rows: int) -> bool:
        per_sample = self.seconds_per_sample
        return per_sample is not None and self.inline_budget_s > 0 and rows * per_sample <= self.inline_budget_s

    async def run(self, inputs: Mapping[str, np.ndarray], alone: bool = False) -> Tensors:
        if self.runs_inline(rows_of(inputs)):
            return self.run_inline(inputs)
        if self.usage is None:
            return await anyio.to_thread.run_sync(self.run_sync, inputs)
        queued = time.perf_counter_ns()
        outputs, started, ended = await anyio.to_thread.run_sync(self._run_gated_timed, inputs)
        self.usage.record_alone(rows_of(inputs), started - queued, ended - started)
        return outputs
