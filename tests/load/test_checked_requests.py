"""Checked requests under dynamic batching, on real onnxruntime sessions and the real data plane.

A default request picked for an equivalence check must complete in the same event-loop turn as the
unchecked requests of its folded batch when the unfolded run is cheap (inline): a checked request that lags
its batch by a few turns makes its client's next request arrive alone, which splits the batcher's waves in
a closed loop (1 % sampling then cost 8 % of throughput). Costlier unfolded runs go concurrently with
folded instead; both paths must give the folded outputs and a conclusive agreement.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bnfold.service.dataplane import DataPlane, Outcome
from bnfold.service.loader import load_all
from bnfold.service.metrics import ServiceMetrics
from bnfold.service.model import Registry
from bnfold.service.settings import Settings
from tests.service.builders import Weights, reference_logits, write_entry

REQUESTS = 12


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> tuple[Path, Weights]:
    root = tmp_path_factory.mktemp("checked")
    return root, write_entry(root, "digits", rng)[0]


def loaded_plane(root: Path, inline_budget_ms: float) -> DataPlane:
    settings = Settings(
        repository=root, equivalence_policy="sample", max_batch_delay_ms=0, inline_run_budget_ms=inline_budget_ms
    )
    metrics = ServiceMetrics()
    plane = DataPlane(Registry(["digits"]), settings, metrics)
    load_all(plane.registry, settings, metrics)
    assert plane.registry.models["digits"].state == "ready"
    return plane


async def run_wave(plane: DataPlane, inputs: list[np.ndarray], checked: int) -> tuple[list[Outcome], list[int]]:
    """Every request at once (only `checked` with a check); each outcome with the loop turn it completed in."""
    model = plane.registry.get("digits")
    turn = 0
    done = asyncio.Event()

    async def count_turns() -> None:
        nonlocal turn
        while not done.is_set():
            await asyncio.sleep(0)
            turn += 1

    async def request(index: int, x: np.ndarray) -> tuple[Outcome, int]:
        outcome = await plane.execute(model, None, {"input": x}, f"r{index}", index == checked)
        return outcome, turn

    counter = asyncio.create_task(count_turns())
    results = await asyncio.gather(*(request(i, x) for i, x in enumerate(inputs)))
    done.set()
    await counter
    return [outcome for outcome, _ in results], [finished for _, finished in results]


def wave_inputs(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(size=(1, 1, 8, 8)).astype(np.float32) for _ in range(REQUESTS)]


def assert_outcomes(outcomes: list[Outcome], inputs: list[np.ndarray], weights: Weights, checked: int) -> None:
    for index, (outcome, x) in enumerate(zip(outcomes, inputs, strict=True)):
        assert outcome.variant == "folded" and not outcome.failed_over
        np.testing.assert_allclose(outcome.outputs["logits"], reference_logits(weights, x), rtol=1e-4, atol=1e-5)
        if index == checked:
            assert outcome.equivalence is not None and outcome.equivalence.agree
            assert set(outcome.seconds) == {"folded", "unfolded"}
        else:
            assert outcome.equivalence is None


def test_a_cheap_check_completes_with_its_batch(repository: tuple[Path, Weights], rng: np.random.Generator) -> None:
    root, weights = repository
    plane = loaded_plane(root, inline_budget_ms=50.0)
    inputs = wave_inputs(rng)
    outcomes, turns = asyncio.run(run_wave(plane, inputs, checked=3))
    assert_outcomes(outcomes, inputs, weights, checked=3)
    assert len(set(turns)) == 1, f"requests completed in loop turns {turns}: the checked request lagged its batch"
    registry = plane.metrics.registry
    assert registry.get_sample_value("bnfold_equivalence_checks_total", {"model": "digits"}) == 1
    unfolded = {"model": "digits", "variant": "unfolded"}
    assert registry.get_sample_value("bnfold_batch_requests_count", unfolded) is None  # ran inline, unbatched


def test_a_costly_check_runs_both_variants_concurrently(
    repository: tuple[Path, Weights], rng: np.random.Generator
) -> None:
    """Inline budget 0: every run goes to a worker thread and the two variants run side by side."""
    root, weights = repository
    plane = loaded_plane(root, inline_budget_ms=0.0)
    inputs = wave_inputs(rng)
    outcomes, _ = asyncio.run(run_wave(plane, inputs, checked=5))
    assert_outcomes(outcomes, inputs, weights, checked=5)
    unfolded = {"model": "digits", "variant": "unfolded"}
    # the check went through the unfolded variant's batcher, as one run of one request
    assert plane.metrics.registry.get_sample_value("bnfold_batch_requests_sum", unfolded) == 1
