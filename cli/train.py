"""`bnfold train [NAME …] [--seed N] [--json]`: train zoo models (or take them from the weights cache).

Prints one row per model: dataset, held-out metric, training time and whether the cache answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from bnfold.cli.support import OneLineParser, run, stdout_console
from bnfold.models.errors import BadInputError
from bnfold.models.progress import Progress
from bnfold.models.zoo.catalog import DEFAULT_SEED, ZOO, trained


def train_main(argv: Sequence[str]) -> int:
    parser = OneLineParser(prog="train", description="Train zoo models and print their held-out metrics.")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"zoo models (default: all of {', '.join(ZOO)})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="training seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    args = parser.parse_args(list(argv))
    progress = Progress(quiet=args.json)
    return run("train", lambda: _train(args.names or list(ZOO), args.seed, progress), as_json=args.json, show=_show)


def _train(names: list[str], seed: int, progress: Progress) -> dict[str, Any]:
    unknown = [name for name in names if name not in ZOO]
    if unknown:
        raise BadInputError(f"no zoo model {unknown[0]!r}; choose from: {', '.join(ZOO)}")
    rows = []
    for name in names:
        with progress.step(f"training {name} (seed {seed})"):
            model = trained(name, seed=seed)
        rows.append({"name": name, "dataset": model.spec.dataset, "metrics": model.metrics,
                     "train_seconds": round(model.train_seconds, 2), "from_cache": model.from_cache})  # fmt: skip
    return {"ok": True, "seed": seed, "models": rows}


def _show(result: dict[str, Any]) -> None:
    table = Table(title=f"zoo (seed {result['seed']})")
    for column in ("model", "dataset", "held-out metric", "train s", "cache"):
        table.add_column(column)
    for row in result["models"]:
        metrics = ", ".join(f"{key} {value:.4g}" for key, value in row["metrics"].items())
        cache = "hit (time of the cached run)" if row["from_cache"] else "trained now"
        table.add_row(row["name"], row["dataset"], metrics, f"{row['train_seconds']:.1f}", cache)
    stdout_console().print(table)
