"""The folding benchmark's measurement on a tiny net (1 repetition), and the shared timing helpers.

No timing is asserted: only the structure of the result, BN counts, and that folding kept the outputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from bench.common import Summary, interleaved_timings, markdown_table, save_results
from bench.folding_speedup import RUNTIMES, BenchCase, Settings, batchnorm_table, measure_case, results_table
from bench.folding_variants import VARIANTS, build_variants
from bnfold.folding.compare import Tolerance, discrepancy
from tests.nets.reference_nets import batchnorm_modules, randomize_batchnorm


class TinyNet(nn.Module):
    """conv → BN → ReLU → conv → BN → pool → Linear: two foldable BNs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(TinyNet().eval(), seed=7)


@pytest.fixture(scope="module")
def measured() -> dict:
    case = BenchCase("tiny", "test", tiny_net, (3, 10, 10))
    settings = Settings(batches=(1, 3), repetitions={1: 1, 3: 1}, warmup=0, threads=1)
    return measure_case(case, settings)


def test_measure_case_result_structure(measured: dict) -> None:
    assert measured["model"] == "tiny" and measured["sample_shape"] == [3, 10, 10]
    cells = [(cell["runtime"], cell["batch"]) for cell in measured["cells"]]
    assert sorted(cells) == sorted((runtime, batch) for runtime in RUNTIMES for batch in (1, 3))
    for cell in measured["cells"]:
        latency = cell["latency_ms"]
        assert set(latency) == set(VARIANTS)
        for summary in latency.values():
            assert summary["repetitions"] == 1
            assert 0 < summary["p10_ms"] == summary["median_ms"] == summary["p90_ms"]
        ratio = latency["unfolded"]["median_ms"] / latency["folded"]["median_ms"]
        assert cell["unfolded_over_folded"] == pytest.approx(ratio)
        ideal = latency["folded"]["median_ms"] / latency["bn_deleted"]["median_ms"]
        assert cell["folded_over_bn_deleted"] == pytest.approx(ideal)
    json.dumps(measured)  # the result must be JSON-serialisable as it is saved


def test_measure_case_counts_batchnorm_per_variant(measured: dict) -> None:
    expected = {"unfolded": 2, "folded": 0, "bn_deleted": 0}
    assert measured["batchnorm_modules"] == expected
    assert measured["batchnorm_onnx_nodes"] == expected
    # onnxruntime's own optimiser fuses Conv+BN (the export writes even a missing conv bias as a constant).
    assert measured["batchnorm_after_ort_optimiser"] == {"unfolded": 0, "folded": 0, "bn_deleted": 0}
    assert measured["fold_summary"].startswith("2/2 BatchNorm folded")


def test_measure_case_reports_folded_outputs_equal_unfolded(measured: dict) -> None:
    for runtime in RUNTIMES:
        error = measured["output_error"][runtime]
        assert error["ok"] is True
        assert error["max_rel"] < 1e-5


def test_folded_variant_equals_unfolded_and_deleted_variant_differs() -> None:
    """Independent check of the three variants the benchmark times (random BN statistics)."""
    example = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    original = tiny_net()
    before = {key: value.clone() for key, value in original.state_dict().items()}
    models, _ = build_variants(original, example)
    with torch.inference_mode():
        outputs = {name: model(example) for name, model in models.items()}
    assert discrepancy(outputs["folded"], outputs["unfolded"]).within(Tolerance.for_dtype("float32"))
    assert discrepancy(outputs["bn_deleted"], outputs["unfolded"]).max_rel > 1e-2
    assert len(batchnorm_modules(original)) == 2  # the input model is not changed
    assert all(torch.equal(before[key], value) for key, value in original.state_dict().items())
    # every variant is a flat fx graph; the BN-deleted one has no call left where a BN was
    assert all(isinstance(model, fx.GraphModule) for model in models.values())
    calls = {
        name: [str(node.target) for node in model.graph.nodes if node.op == "call_module"]
        for name, model in models.items()
    }
    assert calls["bn_deleted"] == [target for target in calls["unfolded"] if target not in ("body.1", "body.4")]


def test_tables_have_one_row_per_cell_and_per_model(measured: dict) -> None:
    lines = results_table([measured]).splitlines()
    assert len(lines) == 2 + len(measured["cells"])
    assert lines[2].startswith("| tiny | torch | 1 |") and lines[2].count("|") == 9
    assert batchnorm_table([measured]).splitlines()[2].startswith("| tiny | 2/2 BatchNorm folded")


def test_interleaved_timings_rotates_the_order_after_warmup() -> None:
    calls: list[str] = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = interleaved_timings(runners, repetitions=4, warmup=1)
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab" + "abc"
    assert {name: len(times) for name, times in samples.items()} == {"a": 4, "b": 4, "c": 4}
    with pytest.raises(ValueError, match="repetitions"):
        interleaved_timings(runners, repetitions=0)


def test_summary_median_and_deciles() -> None:
    summary = Summary.of([s / 1000 for s in range(1, 12)])  # 1 … 11 ms
    assert (summary.median_ms, summary.p10_ms, summary.p90_ms, summary.repetitions) == pytest.approx((6, 2, 10, 11))
    with pytest.raises(ValueError, match="no timings"):
        Summary.of([])


def test_markdown_table_and_atomic_save(tmp_path: Path) -> None:
    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a"], [[1, 2]])
    path = save_results("demo", {"value": 1.5}, directory=tmp_path)
    assert json.loads(path.read_text()) == {"value": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]


class ShortcutNet(nn.Module):
    """y = relu(BN(conv(x)) + shortcut(x)) with an identity shortcut: an nn.Identity that is not a BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)) + self.shortcut(x))


def test_bn_deleted_differs_from_folded_only_in_batchnorm() -> None:
    """The network's own Identity calls stay in every variant; only the BatchNorms go."""
    torch.manual_seed(0)
    model = randomize_batchnorm(ShortcutNet().eval(), seed=3)
    x = torch.randn(2, 4, 6, 6)
    models, _ = build_variants(model, x)
    called = {
        name: sorted(str(node.target) for node in variant.graph.nodes if node.op == "call_module")
        for name, variant in models.items()
    }
    assert called == {
        "unfolded": ["bn", "conv", "shortcut"],
        "folded": ["conv", "shortcut"],
        "bn_deleted": ["conv", "shortcut"],
    }
    with torch.no_grad():
        conv_out = torch.nn.functional.conv2d(x, model.conv.weight, padding=1)
        torch.testing.assert_close(models["bn_deleted"](x), torch.relu(conv_out + x))


def test_fast_cells_get_more_rounds_up_to_the_cap() -> None:
    from bench.folding_speedup import MAX_REPETITIONS, repetitions_for

    fast = {"a": lambda: None, "b": lambda: None}
    assert repetitions_for(fast, 7, 0.0) == 7
    assert repetitions_for(fast, 7, 10.0) == MAX_REPETITIONS
    slow = {"a": lambda: time.sleep(0.01)}
    assert repetitions_for(slow, 3, 0.02) == 3  # ~2 rounds would fill 0.02 s: never fewer than asked
    assert 5 <= repetitions_for(slow, 1, 0.3) <= 30
    calls = 0

    def cold_first() -> None:  # the first call is 200× slower, as a first inference often is
        nonlocal calls
        calls += 1
        time.sleep(0.2 if calls == 1 else 0.001)

    # ~0.4 s / ~1.1 ms ≈ 360 rounds; an estimate from the cold call would give 0.4 s / 0.2 s = 2. The bound
    # tolerates warm calls of up to 10 ms (sleep overshoot on a loaded machine).
    assert repetitions_for({"a": cold_first}, 1, 0.4) >= 40
