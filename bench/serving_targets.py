"""The targets of the serving benchmark, evaluated on bench.serving's results (met / not met)."""

from __future__ import annotations

from typing import Any

from bench.common import markdown_table


def _target(name: str, measured: str, met: bool) -> dict[str, Any]:
    return {"target": name, "measured": measured, "met": met}


def _sweep_targets(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    floor = {row["concurrency"]: row["throughput_rps"] for row in sweep["floor"]}
    rows = {(r["model"], r["kind"], r["concurrency"]): r for r in sweep["rows"]}
    out = []
    for model in sorted({r["model"] for r in sweep["rows"]}):
        if (model, "json", 32) in rows and 32 in floor:
            share_json = rows[model, "json", 32]["throughput_rps"] / floor[32]
            share_binary = rows[model, "binary", 32]["throughput_rps"] / floor[32]
            name = f"{model}: V2 JSON at 32 in flight ≥ 40% of the floor"
            out.append(_target(name, f"{share_json:.0%}", share_json >= 0.40))
            measured = f"{share_binary:.0%} vs {share_json:.0%}"
            out.append(_target(f"{model}: binary at 32 ≥ JSON at 32", measured, share_binary >= share_json))
        if (model, "binary", 1) in rows:
            gap = rows[model, "binary", 1]["p50_ms"] - sweep["in_process"][model]["p50_ms"]
            name = f"{model}: binary p50 at 1 in flight within 1 ms of in-process"
            out.append(_target(name, f"+{gap:.2f} ms", gap <= 1.0))
    return out


def _batching_target(batching: dict[str, Any]) -> dict[str, Any]:
    """Batching against what onnxruntime itself does at batch 32 in process (one run per core): the most a
    batcher can reach; the gain over no batching and onnxruntime's own batch-32 ÷ batch-1 gain are shown too."""
    served = batching["batching"]["throughput_rps"]
    limits = batching["in_process"]
    ceiling = limits["batch 32"]["throughput_sps"]
    gain = served / batching["no batching"]["throughput_rps"]
    own = ceiling / limits["batch 1"]["throughput_sps"]
    measured = (
        f"{served / ceiling:.0%} of {ceiling:.1f} images/s (×{gain:.2f} over no batching; onnxruntime batch 32 ÷ "
        f"batch 1: ×{own:.2f})"
    )
    name = "ResNet-18 224×224 at 64 in flight: batching ≥ 90 % of onnxruntime's batch-32 throughput"
    return _target(name, measured, served >= 0.9 * ceiling)


def _equivalence_targets(equivalence: dict[str, Any]) -> list[dict[str, Any]]:
    digits = equivalence["digits_resnet"]
    cost = 1 - digits["sample"]["c32"]["throughput_rps"] / digits["off"]["c32"]["throughput_rps"]
    out = [_target("digits_resnet: `sample` 1% costs ≤ 5% throughput (32 in flight)", f"{cost:.1%}", cost <= 0.05)]
    for model in ("digits_resnet", "resnet18"):
        policies = equivalence.get(model, {})
        if "always" not in policies:
            continue
        extra = policies["always"]["c1"]["p50_ms"] - policies["off"]["c1"]["p50_ms"]
        second = policies["unfolded_in_process_p50_ms"]
        out.append(
            _target(
                f"{model}: `always` adds ≤ the unfolded model's compute (p50, 1 in flight)",
                f"+{extra:.2f} ms vs {second:.2f} ms",
                extra <= second,
            )
        )
    return out


def report_targets(results: dict[str, Any], quiet: bool = False) -> list[dict[str, Any]]:
    """Every target with its measured value; printed as a markdown table unless `quiet`."""
    targets = _sweep_targets(results["sweep"])
    if "batching" in results:
        targets.append(_batching_target(results["batching"]))
    if "equivalence" in results:
        targets += _equivalence_targets(results["equivalence"])
    if not quiet:
        print("\n### Targets\n")
        rows = [[t["target"], t["measured"], "met" if t["met"] else "**not met**"] for t in targets]
        print(markdown_table(["target", "measured", "result"], rows))
    return targets
