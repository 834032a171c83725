"""The zoo from scratch: training time, accuracy, BN folded / total and fold-and-export time per model.

Builds the default repository (models.zoo.default_repository.build_default, the code path of
`bnfold build-default`) into a temporary directory with an empty temporary weights cache, so every model is
trained now. Reported per model: held-out metric, BatchNorm folded / total, max |folded − PyTorch| on the
calibration batch, training wall time, and fold-and-export wall time (fold, export both variants, verify,
write). Target: the whole zoo trains in under 2 minutes on 2 cores. Prints a markdown table and saves
bench/results/zoo_build.json.

    .venv/bin/python -m bench.zoo_build
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine_description, markdown_table, save_results
from bnfold.folding.report import FoldReport
from bnfold.models.zoo.default_repository import build_default

TRAINING_BUDGET_SECONDS = 120.0


def _row(repository: Path, entry: Any) -> dict[str, Any]:
    manifest = json.loads((repository / entry.name / "model.json").read_text())
    report = FoldReport.from_json(manifest["fold_report"])
    return {
        "model": entry.name,
        "metrics": entry.metrics,
        "batchnorm_folded": report.folded,
        "batchnorm_total": report.total,
        "max_output_error": manifest["fold_report"]["max_output_error"],
        "train_seconds": entry.train_seconds,
        "fold_and_export_seconds": entry.export_seconds,
    }


def _metric(metrics: dict[str, float]) -> str:
    if "test_accuracy" in metrics:
        return f"accuracy {100 * metrics['test_accuracy']:.1f}%"
    return f"reconstruction MSE {metrics['reconstruction_mse']:.2e}"


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        repository, cache = Path(scratch) / "repository", Path(scratch) / "cache"
        start = time.perf_counter()
        entries = build_default(repository, cache_dir=cache)
        total = time.perf_counter() - start
        rows = [_row(repository, entry) for entry in entries]
    training = sum(row["train_seconds"] for row in rows)
    table = markdown_table(
        ["model", "held-out metric", "BN folded / total", "end-to-end max abs error (fold report)", "train s",
         "fold+export s"],
        [[row["model"], _metric(row["metrics"]), f"{row['batchnorm_folded']}/{row['batchnorm_total']}",
          f"{row['max_output_error']:.1e}", f"{row['train_seconds']:.1f}", f"{row['fold_and_export_seconds']:.1f}"]
         for row in rows],
    )  # fmt: skip
    print(table)
    budget = f"budget {TRAINING_BUDGET_SECONDS:.0f} s"
    print(f"\nwhole zoo: training {training:.1f} s ({budget}), build-default {total:.1f} s")
    payload = {"machine": machine_description(), "models": rows, "training_seconds": training, "total_seconds": total}
    print(f"saved {save_results('zoo_build', payload)}")


if __name__ == "__main__":
    main()
