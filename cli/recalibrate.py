"""`bnfold recalibrate`: re-estimate every BatchNorm's population statistics (models/recalibrate.py).

    bnfold recalibrate --model SPEC [--weights FILE] [--data FILE.npz] [--batch-size 64]
                       [--save FILE.pt] [--json]

For `zoo:NAME` the calibration set is the training split and accuracy (or reconstruction error) is measured
on the held-out split before and after. Other SPECs need `--data FILE.npz` with an array `x` (and `y`
integer labels to measure accuracy on the same data). `--save` writes the recalibrated state_dict, which
`bnfold fold-and-export --weights` accepts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from bnfold.cli.support import OneLineParser, run, stdout_console
from bnfold.models.errors import BadInputError
from bnfold.models.export.sources import load_spec
from bnfold.models.recalibrate import recalibrate
from bnfold.models.zoo.catalog import ZOO, trained
from bnfold.models.zoo.training import evaluate


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="recalibrate", description="Re-estimate BatchNorm population statistics.")
    parser.add_argument("--model", required=True, metavar="SPEC", help="zoo:NAME, path/to/net.py:build, …")
    parser.add_argument("--weights", type=Path, help="a state_dict file (torch.load(weights_only=True))")
    parser.add_argument("--data", type=Path, help=".npz with x (calibration inputs) and optional y (labels)")
    parser.add_argument("--batch-size", type=int, default=64, help="calibration mini-batch size m (default 64)")
    parser.add_argument("--save", type=Path, help="write the recalibrated state_dict here")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    return parser


def recalibrate_main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    return run("recalibrate", lambda: _recalibrate(args), as_json=args.json, show=_show)


def _data(args: Any) -> tuple[torch.nn.Module, np.ndarray, np.ndarray | None, np.ndarray | None, str]:
    """(model, calibration x, evaluation x, evaluation y, task)."""
    if args.model.startswith("zoo:") and args.data is None:
        name = args.model.removeprefix("zoo:")
        if name not in ZOO:
            raise BadInputError(f"no zoo model {name!r}; choose one of: {', '.join(ZOO)}")
        model = load_spec(args.model, weights=args.weights).module
        split = trained(name).split
        return model, split.x_train, split.x_test, split.y_test, ZOO[name].task
    if args.data is None:
        raise BadInputError(f"{args.model} needs calibration data: --data FILE.npz with an array 'x'")
    if not args.data.is_file():
        raise BadInputError(f"data file {args.data} not found; check --data")
    with np.load(args.data, allow_pickle=False) as archive:
        if "x" not in archive.files:
            raise BadInputError(f"{args.data} has no array 'x' (it has {archive.files}); save it with np.savez(x=…)")
        x, y = archive["x"].astype(np.float32), archive["y"] if "y" in archive.files else None
    shape = ",".join(str(size) for size in x.shape)
    model = load_spec(args.model, weights=args.weights, input_shape=shape).module
    return model, x, (x if y is not None else None), y, "classification"


def _recalibrate(args: Any) -> dict[str, Any]:
    model, calibration, x_eval, y_eval, task = _data(args)
    try:
        result = recalibrate(model, torch.from_numpy(calibration), batch_size=args.batch_size)
    except ValueError as error:
        raise BadInputError(str(error)) from None
    summary: dict[str, Any] = {"ok": True, "model": args.model, "batch_size": args.batch_size}
    summary["batchnorms"] = [asdict(shift) for shift in result.shifts]
    if x_eval is not None and y_eval is not None:
        summary["before"] = evaluate(model, x_eval, y_eval.astype(np.int64), task)
        summary["after"] = evaluate(result.model, x_eval, y_eval.astype(np.int64), task)
    if args.save is not None:
        _save(result.model.state_dict(), args.save)
        summary["saved"] = str(args.save)
    return summary


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _show(summary: dict[str, Any]) -> None:
    table = Table(title=f"{summary['model']}: population statistics (mini-batches of {summary['batch_size']})")
    for column in ("BatchNorm", "max |Δμ| / σ_old", "σ²_new / σ²_old (min … max)"):
        table.add_column(column)
    for bn in summary["batchnorms"]:
        table.add_row(bn["bn"], f"{bn['mean_shift']:.3g}", f"{bn['var_ratio_min']:.3g} … {bn['var_ratio_max']:.3g}")
    console = stdout_console()
    console.print(table)
    if "before" in summary:
        console.print(f"before: {summary['before']}   after: {summary['after']}")
    if "saved" in summary:
        console.print(f"saved the recalibrated state_dict to {summary['saved']}")
