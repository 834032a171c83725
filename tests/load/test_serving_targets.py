"""bench.serving_targets on a hand-made result: each target's measured value and verdict."""

from __future__ import annotations

from bench.serving_targets import report_targets


def sweep_row(model: str, kind: str, concurrency: int, rps: float, p50: float) -> dict:
    return {"model": model, "kind": kind, "concurrency": concurrency, "throughput_rps": rps, "p50_ms": p50}


def test_targets_from_a_result() -> None:
    results = {
        "sweep": {
            "floor": [{"concurrency": 32, "throughput_rps": 1000.0}],
            "rows": [
                sweep_row("m", "json", 32, 450.0, 9.0),
                sweep_row("m", "binary", 32, 500.0, 8.0),
                sweep_row("m", "binary", 1, 2000.0, 0.5),
            ],
            "in_process": {"m": {"p50_ms": 0.1}},
        },
        "batching": {
            "batching": {"throughput_rps": 90.0},
            "no batching": {"throughput_rps": 60.0},
            "in_process": {"batch 1": {"throughput_sps": 80.0}, "batch 32": {"throughput_sps": 100.0}},
        },
        "equivalence": {
            "digits_resnet": {
                "off": {"c32": {"throughput_rps": 1000.0}, "c1": {"p50_ms": 0.40}},
                "sample": {"c32": {"throughput_rps": 960.0}, "c1": {"p50_ms": 0.40}},
                "always": {"c32": {"throughput_rps": 600.0}, "c1": {"p50_ms": 0.55}},
                "unfolded_in_process_p50_ms": 0.05,
            }
        },
    }
    found = {t["target"]: (t["measured"], t["met"]) for t in report_targets(results, quiet=True)}
    assert found == {
        "m: V2 JSON at 32 in flight ≥ 40% of the floor": ("45%", True),
        "m: binary at 32 ≥ JSON at 32": ("50% vs 45%", True),
        "m: binary p50 at 1 in flight within 1 ms of in-process": ("+0.40 ms", True),
        "ResNet-18 224×224 at 64 in flight: batching ≥ 90 % of onnxruntime's batch-32 throughput": (
            "90% of 100.0 images/s (×1.50 over no batching; onnxruntime batch 32 ÷ batch 1: ×1.25)",
            True,
        ),
        "digits_resnet: `sample` 1% costs ≤ 5% throughput (32 in flight)": ("4.0%", True),
        "digits_resnet: `always` adds ≤ the unfolded model's compute (p50, 1 in flight)": (
            "+0.15 ms vs 0.05 ms",
            False,
        ),
    }
