"""How completely and how exactly `folding.onnx_fold.fold_onnx` folds real ONNX exports.

For every zoo model (trained weights from the cache, or trained now) and for locally built ResNet-50,
MobileNetV2 and the small DenseNet (random BN statistics), the model is exported with BN kept
(folding.export.export_onnx) and folded with fold_onnx. Reported: BN folded / lowered / kept of the
total, the worst per-BN error of the report, the end-to-end max |folded − unfolded| on a batch relative to
max |unfolded| (onnxruntime, all graph optimisations off), and the fold wall time without example inputs
(median of N runs; it includes validating the input and the output with onnx.checker and shape inference).
Prints a markdown table and saves bench/results/onnx_fold.json.

    .venv/bin/python -m bench.onnx_fold [--repetitions 3] [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from torch import nn

from bench.common import Summary, machine_description, markdown_table, save_results
from bnfold.folding.compare import discrepancy
from bnfold.folding.export import count_op, export_onnx
from bnfold.folding.onnx_fold import fold_onnx
from bnfold.folding.onnx_measure import run_all_optimisations_off
from bnfold.folding.report import Action
from bnfold.models.zoo.catalog import ZOO, trained
from tests.nets.reference_nets import densenet_small, mobilenet_v2, resnet50

REFERENCE_NETS: dict[str, Callable[[], nn.Module]] = {
    "resnet50": lambda: resnet50(num_classes=1000),
    "mobilenet_v2": lambda: mobilenet_v2(num_classes=1000),
    "densenet_small": lambda: densenet_small(num_classes=1000),
}


def randomised_statistics(model: nn.Module, seed: int) -> nn.Module:
    """Random γ, β, μ and σ² ∈ [0.5, 1.5] in every BN, so that no BN is an identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)  # type: ignore[union-attr]
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.5, 0.5, generator=generator)
    return model.eval()


def measure(
    name: str, model: nn.Module, batch: NDArray[np.float32], input_name: str, repetitions: int
) -> dict[str, Any]:
    """Export with BN kept, fold `repetitions` times, and compare folded with unfolded on `batch`."""
    example = (torch.from_numpy(batch[:2]),)
    exported = export_onnx(model, example, input_names=[input_name], output_names=["output"])
    feeds = {input_name: batch}
    seconds = []
    for _ in range(repetitions):  # the fold alone; measuring the report's errors runs onnxruntime twice more
        start = time.perf_counter()
        fold_onnx(exported)
        seconds.append(time.perf_counter() - start)
    result = fold_onnx(exported, feeds)
    onnx.checker.check_model(result.model, full_check=True)
    reference = run_all_optimisations_off(exported, feeds)["output"]
    folded = run_all_optimisations_off(result.model, feeds)["output"]
    gap = discrepancy(folded, reference)
    errors = [entry.max_error for entry in result.report if entry.max_error is not None]
    return {
        "model": name,
        "batchnorm_total": count_op(exported),
        "batchnorm_left": count_op(result.model),
        "folded": result.report.folded,
        "lowered": result.report.count(Action.LOWERED),
        "kept": result.report.count(Action.KEPT),
        "worst_entry_error": max(errors, default=0.0),
        "output_max_abs": gap.max_abs,
        "output_max_rel": gap.max_rel,
        "fold_time": Summary.of(seconds).to_json(),
        "summary": result.report.summary(),
    }


def _zoo_rows(repetitions: int) -> list[dict[str, Any]]:
    rows = []
    for name, spec in ZOO.items():
        zoo = trained(name)
        rows.append(measure(name, zoo.model.eval(), zoo.calibration_batch(), spec.input_name, repetitions))
    return rows


def _reference_rows(repetitions: int, resolution: int, quick: bool) -> list[dict[str, Any]]:
    rows = []
    batch = np.random.default_rng(0).standard_normal((2, 3, resolution, resolution)).astype(np.float32)
    for name, factory in REFERENCE_NETS.items():
        if quick and name != "mobilenet_v2":
            continue
        rows.append(measure(name, randomised_statistics(factory(), seed=1), batch, "input", repetitions))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repetitions", type=int, default=3, help="fold runs per model (median reported)")
    parser.add_argument("--resolution", type=int, default=64, help="input side of the reference nets")
    parser.add_argument("--quick", action="store_true", help="zoo plus MobileNetV2 only")
    args = parser.parse_args(argv)
    rows = _zoo_rows(args.repetitions) + _reference_rows(args.repetitions, args.resolution, args.quick)
    header = ["model", "BN folded / total", "lowered", "kept", "BN left", "worst entry |Δ|", "output |Δ| / max|y|",
              "fold time ms (median)"]  # fmt: skip
    table = [
        [r["model"], f"{r['folded']}/{r['batchnorm_total']}", r["lowered"], r["kept"], r["batchnorm_left"],
         f"{r['worst_entry_error']:.2e}", f"{r['output_max_rel']:.2e}", f"{r['fold_time']['median_ms']:.0f}"]
        for r in rows
    ]  # fmt: skip
    print(markdown_table(header, table))
    settings = {"repetitions": args.repetitions, "resolution": args.resolution, "quick": args.quick}
    path = save_results("onnx_fold", {"machine": machine_description(**settings), "results": rows})
    print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
