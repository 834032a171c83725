"""`bnfold fold-and-export` and `bnfold build-default`.

    bnfold fold-and-export --model SPEC [--weights FILE] [--input-shape 1,3,32,32] [--calibration FILE.npy|.npz]
                           [--input-names NAME,…] [--output-names NAME,…] [--name NAME]
                           [--task classification|regression|reconstruction] [--external-data-above BYTES]
                           --out REPO_DIR [--json]
    bnfold build-default --out REPO_DIR [--json]

Progress goes to stderr; the summary (or with --json a machine-readable one) to stdout.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from bnfold.cli.support import OneLineParser, run, stdout_console
from bnfold.contract.errors import ContractError
from bnfold.contract.layout import check_name
from bnfold.models.errors import BadInputError, UsageError
from bnfold.models.export.choices import CALIBRATION_CAP, UserChoices, parse_names
from bnfold.models.export.variant_files import DEFAULT_EXTERNAL_DATA_ABOVE
from bnfold.models.progress import Progress

TASKS = ("classification", "regression", "reconstruction")
TASK_CHECKS = {
    "classification": "the service checks that both variants agree on the arg-max class and within tolerance",
    "regression": "the service checks agreement within tolerance only; arg-max agreement is not checked "
    "(for a classifier, pass --task classification)",
    "reconstruction": "the service checks agreement within tolerance only; arg-max agreement is not checked "
    "(for a classifier, pass --task classification)",
}


def _fold_and_export_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="fold-and-export", description="Fold a model's BatchNorms and write a repository entry."
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="zoo:NAME, path/to/net.py:build, package.module:build, model.pt2 or model.onnx",
    )
    parser.add_argument("--weights", type=Path, help="a state_dict file, read with torch.load(weights_only=True)")
    parser.add_argument(
        "--input-shape",
        metavar="1,3,32,32",
        help="input shape for seeded samples (leading batch size is ignored); a one-input factory needs it "
        "or --calibration",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE.npy|FILE.npz",
        help=f"real input samples, samples first (the first {CALIBRATION_CAP} kept): a .npy for one input, else "
        "a .npz with one array per input keyed by its name (an ONNX graph's input names, a factory's forward "
        "parameter names, or the --input-names when given); an ONNX input takes float samples if it is float "
        "(float64 is cast), integer if integer, bool if bool. Needed for several-input factories and integer "
        "or bool ONNX inputs (default: 16 seeded standard-normal samples)",
    )
    parser.add_argument(
        "--input-names",
        type=_names("--input-names"),
        metavar="NAME[,NAME…]",
        help="the inputs' names in both graphs and the served metadata, one per input in order; an ONNX "
        "graph is renamed before folding (default: input, a factory's forward parameter names when it takes "
        "several, an ONNX graph's own names)",
    )
    parser.add_argument(
        "--output-names",
        type=_names("--output-names"),
        metavar="NAME[,NAME…]",
        help="the outputs' names, one per output (default: output, or output_0, output_1, …, a dict's keys, "
        "an ONNX graph's own names)",
    )
    parser.add_argument("--name", type=_entry_name, help="entry name (default: from the SPEC)")
    parser.add_argument("--task", choices=TASKS, help="how the service compares variants (default: regression)")
    parser.add_argument("--atol", type=float, help="equivalence tolerance: absolute part (default 1e-6 for float32)")
    parser.add_argument("--rtol", type=float, help="equivalence tolerance: part relative to max|reference| (1e-5)")
    parser.add_argument(
        "--external-data-above",
        type=_byte_count,
        default=DEFAULT_EXTERNAL_DATA_ABOVE,
        metavar="BYTES",
        help="write the variants' tensors to external data files when they exceed "
        "BYTES (default 1 GiB; always when the source ONNX used external data)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="REPO_DIR", help="the model repository")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    return parser  # fmt: skip


def _byte_count(value: str) -> int:
    """--external-data-above: a whole number of bytes ≥ 0 (a usage error otherwise)."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of bytes ≥ 0")
    return int(value)


def _entry_name(value: str) -> str:
    """--name as the repository format allows it (a usage error otherwise)."""
    try:
        check_name(value)
    except ContractError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _names(flag: str) -> Any:
    """An argparse type for a comma-separated list of tensor names (a usage error otherwise)."""

    def parse(value: str) -> list[str] | None:
        try:
            return parse_names(value, flag)
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def fold_and_export_main(argv: Sequence[str]) -> int:
    args = _fold_and_export_parser().parse_args(list(argv))
    progress = Progress(quiet=args.json)

    def work() -> Any:
        from bnfold.models.export.fold_and_export import fold_and_export

        return fold_and_export(
            args.model,
            out=args.out,
            name=args.name,
            weights=args.weights,
            input_shape=args.input_shape,
            task=args.task,
            tolerance=_tolerance(args.atol, args.rtol),
            external_data_above=args.external_data_above,
            progress=progress,
            choices=choices,
        )

    choices = UserChoices(args.calibration, args.input_names, args.output_names)
    return run("fold-and-export", work, as_json=args.json, show=_show_export)


def _tolerance(atol: float | None, rtol: float | None) -> tuple[float, float] | None:
    """(atol, rtol) when either is given (the other then defaults to float32's), else None."""
    if atol is None and rtol is None:
        return None
    chosen = (1e-6 if atol is None else atol, 1e-5 if rtol is None else rtol)
    if not all(0.0 <= value < float("inf") for value in chosen):
        raise BadInputError(f"--atol/--rtol must be finite and ≥ 0, got {chosen}")
    return chosen


def _show_export(summary: Any) -> None:
    errors = ", ".join(f"{variant} {value:.2e}" for variant, value in summary.max_abs_error.items())
    print(f"wrote {summary.path}: {summary.fold_summary}; BatchNormalization nodes unfolded "
          f"{summary.batchnorm_nodes['unfolded']}, folded {summary.batchnorm_nodes['folded']}; "
          f"max |Δ| vs {summary.reference}: {errors}")  # fmt: skip
    print(f"task: {summary.task}; " + TASK_CHECKS[summary.task])
    for note in summary.notes:
        print(f"note: {note}")


def build_default_main(argv: Sequence[str]) -> int:
    parser = OneLineParser(prog="build-default", description="Build (or reuse) the default repository: the zoo.")
    parser.add_argument("--out", type=Path, required=True, metavar="REPO_DIR", help="the model repository")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    args = parser.parse_args(list(argv))
    progress = Progress(quiet=args.json)

    def work() -> Any:
        from bnfold.models.export.temporaries import remove_stale
        from bnfold.models.zoo.default_repository import build_default

        removed = [str(path) for path in remove_stale(args.out)]  # left by writers that died
        entries = build_default(args.out, progress=progress)
        models = [entry.to_json() for entry in entries]
        return {"ok": True, "repository": str(args.out), "models": models, "removed_temporaries": removed}

    return run("build-default", work, as_json=args.json, show=_show_default)


def _show_default(result: dict[str, Any]) -> None:
    for path in result["removed_temporaries"]:
        print(f"removed {path}, a temporary directory left by a writer that died")
    models = result["models"]
    if all(model["status"] == "reused" for model in models):
        print(f"{result['repository']}: already built and valid ({len(models)} models); nothing to do")
        return
    table = Table(title=f"default repository {result['repository']}")
    for column in ("model", "status", "fold", "metrics", "train s", "fold+export s"):
        table.add_column(column)
    for model in models:
        metrics = ", ".join(f"{key} {value:.4g}" for key, value in model["metrics"].items())
        train, export = _seconds(model["train_seconds"], "cached"), _seconds(model["export_seconds"], "reused")
        table.add_row(model["name"], model["status"], model["fold_summary"], metrics, train, export)
    stdout_console().print(table)


def _seconds(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.1f}"
