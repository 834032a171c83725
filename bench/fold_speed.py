"""How fast `folding.fold` is on full-size networks built locally, and how exact.

For ResNet-50 and MobileNetV2 (torchvision-sized, 1000 classes; tests/nets/reference_nets.py) plus the small
DenseNet (the case with unfoldable BNs), with random BN statistics: BN folded / total, fold wall time
(median and 10th–90th percentiles of N runs after a warm-up; one fold = deep copy, fx capture, two runs on
the example input for the report, folding), the worst per-BN error of the report, and the end-to-end error
of the folded model on a fresh batch, relative to max |y|. Prints a markdown table and saves
bench/results/fold_speed.json.

    .venv/bin/python -m bench.fold_speed [--repetitions 7] [--resolution 224] [--quick]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bench.common import Summary, interleaved_timings, machine_description, markdown_table, save_results
from bnfold.folding import Action, FoldResult, fold
from bnfold.folding.compare import discrepancy
from tests.nets.reference_nets import densenet_small, mobilenet_v2, randomize_batchnorm, resnet50

NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "resnet50": lambda: resnet50(num_classes=1000),
    "mobilenet_v2": lambda: mobilenet_v2(num_classes=1000),
    "densenet_small": lambda: densenet_small(num_classes=1000),
}
TARGET_SECONDS = {"resnet50": 1.0}  # target: a ResNet-50-sized model folds in under 1 s


def time_fold(model: nn.Module, example: torch.Tensor, repetitions: int) -> tuple[FoldResult, Summary, Summary]:
    """Time fold and, for scale, one forward pass of the unfolded model on the same example, interleaved
    (bench.common): fold measures the per-BN errors by running the model twice, so fold ≈ 2 forwards +
    copy, capture and weight maths. One untimed warm-up each (lazy imports, kernel selection)."""
    results: list[FoldResult] = []

    def forward() -> None:
        with torch.no_grad():
            model(example)

    runners = {"fold": lambda: results.append(fold(model, (example,))), "forward": forward}
    samples = interleaved_timings(runners, repetitions=repetitions, warmup=1)
    return results[-1], Summary.of(samples["fold"]), Summary.of(samples["forward"])


def batchnorm_scales(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """max |output| of every BatchNorm module of the unfolded model on the example (for relative errors)."""
    scales: dict[str, float] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _a, output, name=name: scales.__setitem__(name, float(output.abs().max()))
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    with torch.no_grad():
        model(example)
    for hook in hooks:
        hook.remove()
    return scales


def worst_relative(result: FoldResult, scales: dict[str, float]) -> float:
    """max over BNs of max_error / max |BN output| (the report's max_error is absolute)."""
    ratios = [e.max_error / scales[e.bn] for e in result.report if e.max_error is not None and scales.get(e.bn)]
    return max(ratios, default=0.0)


def end_to_end_error(result: FoldResult, model: nn.Module, resolution: int) -> float:
    """max |folded(x) − unfolded(x)| / max |unfolded(x)| on a fresh batch of 4 (not the example input)."""
    x = torch.randn(4, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return discrepancy(result.model(x).numpy(), model(x).numpy()).max_rel


def measure(name: str, repetitions: int, resolution: int) -> dict[str, Any]:
    model = randomize_batchnorm(NETWORKS[name](), seed=0)
    example = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    result, summary, forward = time_fold(model, example, repetitions)
    per_bn = [entry.max_error for entry in result.report if entry.max_error is not None]
    return {
        "network": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batchnorm_total": result.report.total,
        "batchnorm_folded": result.report.folded,
        "counts": result.report.counts(),
        "fold_time": summary.to_json(),
        "forward_time": forward.to_json(),
        "target_seconds": TARGET_SECONDS.get(name),
        "worst_batchnorm_error": max(per_bn, default=0.0),
        "worst_batchnorm_relative_error": worst_relative(result, batchnorm_scales(model, example)),
        "report_max_output_error": result.report.max_output_error,
        "end_to_end_relative_error": end_to_end_error(result, model, resolution),
    }


def _time_cell(summary: dict[str, float]) -> str:
    return f"{summary['median_ms']:.0f} ms [{summary['p10_ms']:.0f}–{summary['p90_ms']:.0f}]"


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = [
        "network",
        "params",
        "BN folded / total",
        "lowered",
        "fold time median [p10–p90]",
        "one forward (for scale)",
        "worst per-BN max abs error (relative to max abs BN output)",
        "end-to-end max abs error / max abs y",
    ]
    cells = [
        [
            row["network"],
            f"{row['parameters'] / 1e6:.1f} M",
            f"{row['batchnorm_folded']} / {row['batchnorm_total']}",
            row["counts"][Action.LOWERED],
            _time_cell(row["fold_time"]),
            _time_cell(row["forward_time"]),
            f"{row['worst_batchnorm_error']:.1e} ({row['worst_batchnorm_relative_error']:.1e})",
            f"{row['end_to_end_relative_error']:.1e}",
        ]
        for row in rows
    ]
    return markdown_table(header, cells)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repetitions", type=int, default=7, help="timed folds per network (default 7)")
    parser.add_argument("--resolution", type=int, default=224, help="example input H = W (default 224)")
    parser.add_argument("--quick", action="store_true", help="3 repetitions at 64×64 (a smoke run)")
    args = parser.parse_args(argv)
    repetitions, resolution = (3, 64) if args.quick else (args.repetitions, args.resolution)
    rows = [measure(name, repetitions, resolution) for name in NETWORKS]
    machine = machine_description(torch_threads=torch.get_num_threads(), resolution=resolution, batch=1)
    print(
        f"fold speed, example input 1×3×{resolution}×{resolution}, {repetitions} timed folds each, "
        f"{machine['cpu']}, {torch.get_num_threads()} torch threads\n"
    )
    print(table(rows))
    path = save_results("fold_speed_quick" if args.quick else "fold_speed", {"machine": machine, "results": rows})
    print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
