"""How the batcher takes calls: a request the server has alone skips its queue, one with company is queued and
merged as before, and with several run slots a batch leaves the other slots their share of the queue.

The server tells the data plane how many HTTP request tasks it has (uvicorn's set, filled as each request
head is parsed, before any of their tasks runs) and the plane counts its gRPC calls; a call made alone, with
nothing queued or running in its batcher and a run within the inline budget, runs at once in its own task.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bnfold.service.app import create_app
from bnfold.service.batching import BatchingRunner
from bnfold.service.runtime import SessionConfig, SessionRunner, open_session
from bnfold.service.settings import Settings
from bnfold.service.uvicorn_server import build_server
from tests.service.builders import write_entry


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("alone")
    write_entry(root, "digits", rng)
    return root / "digits"


def _runner(
    entry: Path, inline_budget_s: float, delay_ms: float = 0.0
) -> tuple[BatchingRunner, list[tuple[int, int]], ort.InferenceSession]:
    session = open_session(entry / "folded.onnx", SessionConfig(1, 1, "all"))
    inner = SessionRunner(session, inline_budget_s=inline_budget_s)
    inner.timed_run({"input": np.zeros((1, 1, 8, 8), np.float32)})  # measures seconds per sample
    runs: list[tuple[int, int]] = []
    runner = BatchingRunner(inner, 64, delay_ms, 1, lambda requests, rows: runs.append((requests, rows)))
    return runner, runs, session


def test_a_call_alone_runs_at_once(entry: Path, rng: np.random.Generator) -> None:
    runner, runs, session = _runner(entry, inline_budget_s=1.0)
    x = rng.normal(size=(3, 1, 8, 8)).astype(np.float32)
    outputs = asyncio.run(runner.run({"input": x}, alone=True))
    np.testing.assert_array_equal(outputs["logits"], session.run(None, {"input": x})[0])
    assert runs == [(1, 3)] and runner._dispatcher is None  # no queue, no dispatcher task


def test_a_call_alone_behind_a_queued_call_is_merged_with_it(entry: Path, rng: np.random.Generator) -> None:
    runner, runs, session = _runner(entry, inline_budget_s=1.0)
    first, second = (rng.normal(size=(2, 1, 8, 8)).astype(np.float32) for _ in range(2))

    async def both() -> list[dict[str, np.ndarray]]:
        queued = asyncio.ensure_future(runner.run({"input": first}))
        await asyncio.sleep(0)  # `first` is in the queue, its dispatcher not yet run
        assert len(runner._queue) == 1
        second_outputs = await runner.run({"input": second}, alone=True)
        return [await queued, second_outputs]

    outputs = asyncio.run(both())
    for x, got in zip((first, second), outputs, strict=True):
        np.testing.assert_array_equal(got["logits"], session.run(None, {"input": x})[0])
    assert runs == [(2, 4)]  # one merged run of both calls


def test_a_call_alone_beyond_the_inline_budget_goes_through_the_batcher(entry: Path) -> None:
    runner, runs, _ = _runner(entry, inline_budget_s=0.0)
    asyncio.run(runner.run({"input": np.ones((1, 1, 8, 8), np.float32)}, alone=True))
    assert runs == [(1, 1)] and runner._dispatcher is not None


def test_a_call_alone_waits_for_company_when_a_batch_delay_is_set(entry: Path) -> None:
    runner, runs, _ = _runner(entry, inline_budget_s=1.0, delay_ms=1.0)
    asyncio.run(runner.run({"input": np.ones((1, 1, 8, 8), np.float32)}, alone=True))
    assert runs == [(1, 1)] and runner._dispatcher is not None


def test_the_server_gives_the_plane_its_request_tasks(entry: Path) -> None:
    settings = Settings(repository=entry.parent)
    app = create_app(settings)
    plane = app.state.plane
    assert plane.alone() is False  # not served by bnfold's server: nothing is ever alone
    server = build_server(app, settings, limit_logs=False)
    assert plane.http_requests is server.server_state.tasks
    tasks: set[object] = server.server_state.tasks
    tasks.add(object())
    assert plane.alone() is True
    tasks.add(object())
    assert plane.alone() is False  # a second request in progress
    tasks.pop()
    plane.grpc_calls = 1
    assert plane.alone() is False  # an HTTP request and a gRPC call in progress
    tasks.pop()
    assert plane.alone() is True  # the gRPC call alone
    plane.grpc_calls = 2
    assert plane.alone() is False  # two gRPC calls


@pytest.mark.parametrize(("run_slots", "largest"), [(1, 8), (2, 4)])
def test_a_batch_leaves_the_other_run_slots_their_share(
    entry: Path, rng: np.random.Generator, run_slots: int, largest: int
) -> None:
    """Eight waiting calls of a model that runs in worker threads: with one run slot they make one run; with
    two, no run takes more than ⌈8 ÷ 2⌉ of them, so the second slot is never left without work."""
    session = open_session(entry / "folded.onnx", SessionConfig(1, 1, "all"))
    runs: list[tuple[int, int]] = []
    runner = BatchingRunner(SessionRunner(session), 64, 0.0, run_slots, lambda calls, rows: runs.append((calls, rows)))
    inputs = [rng.normal(size=(1, 1, 8, 8)).astype(np.float32) for _ in range(8)]

    async def all_at_once() -> list[dict[str, np.ndarray]]:
        return list(await asyncio.gather(*(runner.run({"input": x}) for x in inputs)))

    for x, got in zip(inputs, asyncio.run(all_at_once()), strict=True):
        np.testing.assert_array_equal(got["logits"], session.run(None, {"input": x})[0])
    assert sum(calls for calls, _ in runs) == 8 and max(calls for calls, _ in runs) == largest


def test_answered_callers_respond_before_the_next_inline_batch_runs(entry: Path) -> None:
    """Six waiting calls, two per run, all inline: each pair resumes (and could send its response) before the
    dispatcher runs the next pair, instead of the loop running every batch first."""
    session = open_session(entry / "folded.onnx", SessionConfig(1, 1, "all"))
    inner = SessionRunner(session, inline_budget_s=1.0)
    inner.timed_run({"input": np.zeros((1, 1, 8, 8), np.float32)})
    runs: list[tuple[int, int]] = []
    runner = BatchingRunner(inner, 2, 0.0, 1, lambda calls, rows: runs.append((calls, rows)))
    seen: list[int] = []

    async def call() -> None:
        await runner.run({"input": np.ones((1, 1, 8, 8), np.float32)})
        seen.append(len(runs))  # runs made when this caller got its answer back

    async def six() -> None:
        await asyncio.gather(*(call() for _ in range(6)))

    asyncio.run(six())
    assert runs == [(2, 2)] * 3 and seen == [1, 1, 2, 2, 3, 3]


def test_calls_cancelled_while_queued_are_not_run(entry: Path, rng: np.random.Generator) -> None:
    """Callers that stop waiting before their batch is gathered (a cancelled gRPC stream or call) are left
    out of the run; the others are answered as usual."""
    runner, runs, session = _runner(entry, inline_budget_s=1.0)
    inputs = [rng.normal(size=(1 + index, 1, 8, 8)).astype(np.float32) for index in range(4)]

    async def some_cancelled() -> list[dict[str, np.ndarray]]:
        calls = [asyncio.ensure_future(runner.run({"input": x})) for x in inputs]
        await asyncio.sleep(0)  # all four queued, the dispatcher not yet run
        assert len(runner._queue) == 4
        calls[1].cancel()
        calls[3].cancel()
        return [await calls[0], await calls[2]]

    kept = asyncio.run(some_cancelled())
    for x, got in zip((inputs[0], inputs[2]), kept, strict=True):
        np.testing.assert_array_equal(got["logits"], session.run(None, {"input": x})[0])
    assert runs == [(2, 1 + 3)]  # one run of the two calls still waiting (1 + 3 samples)


def test_a_batch_whose_callers_all_left_is_not_run(entry: Path) -> None:
    runner, runs, _ = _runner(entry, inline_budget_s=1.0)

    async def all_cancelled() -> None:
        call = asyncio.ensure_future(runner.run({"input": np.ones((2, 1, 8, 8), np.float32)}))
        await asyncio.sleep(0)
        call.cancel()
        for _ in range(5):
            await asyncio.sleep(0)  # the dispatcher gathers the abandoned call and drops it
        answered = await runner.run({"input": np.ones((1, 1, 8, 8), np.float32)})
        assert answered["logits"].shape[0] == 1

    asyncio.run(all_cancelled())
    assert runs == [(1, 1)]
