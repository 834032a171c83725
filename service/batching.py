"""Dynamic batching: a `Runner` that merges concurrent calls for one model variant along axis 0.

Each call is one validated request (`inputs` by name, every input with the same leading dimension n_i).
Calls whose inputs agree on everything but axis 0 (same names, dtypes and trailing shapes) are merged:

    X = concat(X_1, …, X_k) along axis 0,  Y = model(X),  Y_i = Y[o_i : o_i + n_i],  o_i = n_1 + … + n_{i−1}

which equals model(X_i) for every model that treats the samples of a batch independently (every model of a
bnfold repository: inference-time BatchNorm uses fixed statistics). A merged batch holds at most
`max_batch_size` samples. A dispatcher starts a run whenever one of the runner's run slots is free: it takes
the oldest waiting call, adds every compatible waiting call that fits, and — when `max_batch_delay_ms` > 0 —
waits up to that long for more. With delay 0 nothing waits: merging happens only while all slots are busy,
so an idle server answers with the latency of an unbatched run. With delay 0, a call made `alone` (the server
has no other request in progress, so nothing could join its batch) while nothing is queued or running, and
whose run is within the inline budget, runs at once in the caller's task: no queue, future or dispatcher
wake-up. (With a delay, every call waits for company, as configured.)

One bad request never fails its neighbours: if the merged run fails (or an output lacks the batch axis), each
call is run alone and gets its own result or its own error.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import anyio.to_thread
import numpy as np

from bnfold.service.runtime import SessionRunner, Tensors, rows_of
from bnfold.service.usage import VersionUsage

# (input name, dtype, shape without axis 0) per input, in name order; None when the call cannot be merged.
Signature = tuple[tuple[str, np.dtype, tuple[int, ...]], ...]
BatchObserver = Callable[[int, int], None]  # (requests merged, samples) of one run


@dataclass
class _Call:
    inputs: Mapping[str, np.ndarray]
    rows: int
    signature: Signature | None
    future: asyncio.Future[Tensors] | None = field(repr=False)  # None for a call run at once (`alone`)
    queued_ns: int = 0


@dataclass
class _RunReport:
    """Timings of one dispatched batch, measured in its thread and recorded into usage on the loop."""

    started_ns: int  # run slot, gate and thread obtained: the calls' queueing ends here
    executions: list[tuple[int, int, int, int]] = field(default_factory=list)  # rows, merge, run, split ns
    call_infer_ns: dict[int, int] = field(default_factory=dict)  # index of a call that succeeded -> run ns


def signature_of(inputs: Mapping[str, np.ndarray]) -> tuple[Signature | None, int]:
    """The merge key of a call and its number of samples (axis 0); key None if the inputs disagree on n."""
    if len(inputs) == 1:  # the common case, without the general path's dict and sort
        ((name, value),) = inputs.items()
        if isinstance(value, np.ndarray) and value.ndim:
            return ((name, value.dtype, value.shape[1:]),), value.shape[0]
    arrays = {name: np.asarray(value) for name, value in inputs.items()}
    if not arrays or any(array.ndim == 0 for array in arrays.values()):
        return None, 1
    rows = {array.shape[0] for array in arrays.values()}
    if len(rows) != 1:
        return None, max(rows)
    key = tuple(sorted((name, array.dtype, array.shape[1:]) for name, array in arrays.items()))
    return key, rows.pop()


def split_outputs(outputs: Tensors, counts: list[int]) -> list[Tensors] | None:
    """Per-call outputs cut from the merged ones along axis 0; None if an output has no such batch axis."""
    total = sum(counts)
    if any(np.ndim(value) == 0 or np.shape(value)[0] != total for value in outputs.values()):
        return None
    pieces, start = [], 0
    for count in counts:  # views, as np.split gives, without its per-call overhead
        pieces.append({name: value[start : start + count] for name, value in outputs.items()})
        start += count
    return pieces


class BatchingRunner:
    """A `Runner` wrapping a `SessionRunner`: concurrent `run` calls are merged, run once and split back."""

    def __init__(
        self,
        inner: SessionRunner,
        max_batch_size: int,
        max_batch_delay_ms: float,
        run_slots: int,
        observe: BatchObserver | None = None,
    ) -> None:
        self.inner = inner
        self.max_batch_size = max_batch_size
        self.max_delay = max_batch_delay_ms / 1000.0
        self.run_slots = max(1, run_slots)
        self.observe = observe or (lambda requests, rows: None)
        self.usage: VersionUsage | None = None  # per-version statistics (service.usage), set by the loader
        self._closed = False
        self._queue: deque[_Call] = deque()
        self._arrived: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def runs_inline(self, rows: int) -> bool:
        return self.inner.runs_inline(rows)

    def run_inline(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Unbatched run on the calling thread, bypassing the queue (for runs within the inline budget)."""
        if self.usage is None:
            return self.inner.execute(inputs)
        start = time.perf_counter_ns()
        outputs = self.inner.execute(inputs)
        self.usage.record_alone(rows_of(inputs), 0, time.perf_counter_ns() - start)
        return outputs

    def close(self) -> None:
        """Stop the dispatcher once the calls already queued have run (the model was replaced or unloaded).
        A call that still arrives restarts it for as long as calls are waiting. On the event loop's thread."""
        self._closed = True
        if self._arrived is not None:
            self._arrived.set()

    async def run(self, inputs: Mapping[str, np.ndarray], alone: bool = False) -> Tensors:
        signature, rows = signature_of(inputs)
        if alone and not self.max_delay and not self._queue and not self._running and self.inner.runs_inline(rows):
            return self._run_at_once(_Call(inputs, rows, signature, None, time.perf_counter_ns()))
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        self._start()
        self._queue.append(_Call(inputs, rows, signature, future, time.perf_counter_ns()))
        assert self._arrived is not None
        self._arrived.set()
        return await future

    def _start(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._arrived = asyncio.Event()
            self._slots = asyncio.Semaphore(self.run_slots)
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        """Forever: take a free run slot, wait for a call, gather its batch and start running it."""
        assert self._arrived is not None and self._slots is not None
        while True:
            await self._slots.acquire()
            while not self._queue:
                if self._closed:
                    self._slots.release()
                    return
                self._arrived.clear()
                await self._arrived.wait()
            batch = [call for call in await self._gather() if not _abandoned(call)]
            if not batch:  # every caller of the batch was cancelled while it waited: nothing to run
                self._slots.release()
                continue
            if self.inner.runs_inline(sum(call.rows for call in batch)):
                await self._run_batch(batch)  # runs on the loop's thread without suspending: no task needed
                if self._queue:
                    await asyncio.sleep(0)  # let the answered callers respond before the next inline batch
                continue
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather(self) -> list[_Call]:
        """The oldest call plus compatible waiting calls (≤ max_batch_size samples, or a fair share of them),
        waiting ≤ the delay."""
        batch = [self._queue.popleft()]
        if batch[0].signature is None:
            return batch
        if not self.max_delay:
            self._take_compatible(batch, self._fair_share(batch[0]))
            return batch
        deadline = time.monotonic() + self.max_delay
        while True:
            self._take_compatible(batch)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or sum(call.rows for call in batch) >= self.max_batch_size:
                return batch
            assert self._arrived is not None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                self._take_compatible(batch)
                return batch

    def _fair_share(self, first: _Call) -> int:
        """The most samples a batch starting with `first` takes when nothing waits for more (delay 0).

        With one run slot, or when all compatible waiting calls together would run inline (on the loop's
        thread, one after another anyway), max_batch_size. Otherwise ⌈waiting samples ÷ run slots⌉ (at least
        `first`'s): a batch leaves the other slots their share of the queue, so that no slot idles while
        another runs everything that was waiting (with 64 requests in flight and 2 slots, one run of 64 then
        kept the second core idle for its whole length).
        """
        if self.run_slots == 1:
            return self.max_batch_size
        waiting = first.rows + sum(call.rows for call in self._queue if call.signature == first.signature)
        if self.inner.runs_inline(min(waiting, self.max_batch_size)):
            return self.max_batch_size
        return max(first.rows, min(self.max_batch_size, -(-waiting // self.run_slots)))

    def _take_compatible(self, batch: list[_Call], limit: int | None = None) -> None:
        """Move waiting calls with the batch's signature into it while they fit (≤ `limit` samples, by default
        max_batch_size); others keep their order."""
        limit = self.max_batch_size if limit is None else limit
        rows = sum(call.rows for call in batch)
        kept: deque[_Call] = deque()
        while self._queue:
            call = self._queue.popleft()
            if call.signature == batch[0].signature and rows + call.rows <= limit:
                batch.append(call)
                rows += call.rows
            else:
                kept.append(call)
        self._queue.extend(kept)

    async def _run_batch(self, batch: list[_Call]) -> None:
        assert self._slots is not None
        report: _RunReport | None = None
        try:
            if self.inner.runs_inline(sum(call.rows for call in batch)):
                results, report = self._run_merged(batch, False)
            else:
                results, report = await anyio.to_thread.run_sync(self._run_merged, batch, True)
        except BaseException as error:  # cancelled at shutdown: every waiting caller gets the error
            results = [error] * len(batch)
            if not isinstance(error, Exception):
                self._deliver(batch, results)
                raise
        finally:
            self._slots.release()
        if self.usage is not None and report is not None:
            self._record(batch, report, self.usage)
        self._deliver(batch, results)

    def _run_at_once(self, call: _Call) -> Tensors:
        """A batch of one, run now on the loop's thread; its usage is recorded as a dispatched batch's."""
        results, report = self._run_merged([call], False)
        if self.usage is not None:
            self._record([call], report, self.usage)
        if isinstance(results[0], BaseException):
            raise results[0]
        return results[0]

    @staticmethod
    def _record(batch: list[_Call], report: _RunReport, usage: VersionUsage) -> None:
        for rows, merge_ns, run_ns, split_ns in report.executions:
            usage.record_execution(rows, merge_ns, run_ns, split_ns)
        for index, run_ns in report.call_infer_ns.items():
            usage.record_call(report.started_ns - batch[index].queued_ns, run_ns)

    @staticmethod
    def _deliver(batch: list[_Call], results: list[Tensors | BaseException]) -> None:
        for call, result in zip(batch, results, strict=True):
            assert call.future is not None  # calls run at once are never queued
            if call.future.done():
                continue
            if isinstance(result, BaseException):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)

    def _run_merged(self, batch: list[_Call], gated: bool) -> tuple[list[Tensors | BaseException], _RunReport]:
        """One merged run split back, or — if it fails or cannot be split — each call alone. In a worker thread
        under the process-wide gate (`gated`), or inline on the loop for runs within the inline budget."""
        with self.inner.gate if gated else nullcontext():
            report = _RunReport(time.perf_counter_ns())
            if len(batch) > 1:
                pieces = self._run_together(batch, report)
                if pieces is not None:
                    return list(pieces), report
            return [self._run_alone(index, call, report) for index, call in enumerate(batch)], report

    def _run_together(self, batch: list[_Call], report: _RunReport) -> list[Tensors] | None:
        names = list(batch[0].inputs)
        begin = time.perf_counter_ns()
        merged = {name: np.concatenate([call.inputs[name] for call in batch]) for name in names}
        merged_at = time.perf_counter_ns()
        try:
            outputs = self.inner.execute(merged)
            ran_at = time.perf_counter_ns()
            pieces = split_outputs(outputs, [call.rows for call in batch])
        except Exception:
            return None
        if pieces is None:
            return None
        rows = sum(call.rows for call in batch)
        self.observe(len(batch), rows)
        report.executions.append((rows, merged_at - begin, ran_at - merged_at, time.perf_counter_ns() - ran_at))
        report.call_infer_ns = dict.fromkeys(range(len(batch)), ran_at - merged_at)
        return pieces

    def _run_alone(self, index: int, call: _Call, report: _RunReport) -> Tensors | BaseException:
        begin = time.perf_counter_ns()
        try:
            outputs = self.inner.execute(call.inputs)
        except Exception as error:
            return error
        run_ns = time.perf_counter_ns() - begin
        self.observe(1, call.rows)
        report.executions.append((call.rows, 0, run_ns, 0))
        report.call_infer_ns[index] = run_ns
        return outputs


def _abandoned(call: _Call) -> bool:
    """Whether the caller stopped waiting (its task was cancelled, e.g. its gRPC stream or call): not run."""
    return call.future is not None and call.future.done()
