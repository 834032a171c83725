"""`bnfold verify REPO_DIR/NAME` and `bnfold inspect REPO_DIR/NAME`; they need no torch.

verify re-runs every check of models/export/entry_check.py and prints one line per passed check (exit 1 and one
line naming the failed check otherwise); inspect shows the fold report of model.json as a table, or writes
it as a page with --html (service/ui/report_page.py, the page the service shows at /ui/models/NAME/report).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rich.table import Table

from bnfold.cli.support import OneLineParser, run, stdout_console
from bnfold.models.export.entry_check import verify_entry
from bnfold.models.export.repository import read_manifest
from bnfold.service.ui.report_file import entry_report_page


def _entry_parser(prog: str, description: str) -> OneLineParser:
    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("entry", type=Path, metavar="REPO_DIR/NAME", help="a repository entry")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return parser


def verify_main(argv: Sequence[str]) -> int:
    args = _entry_parser("verify", "Re-run the checks of a repository entry.").parse_args(list(argv))

    def work() -> dict[str, Any]:
        result = verify_entry(args.entry)
        return {"ok": True, "entry": str(result.entry), "passed": result.passed, "max_abs_error": result.max_abs_error}

    return run("verify", work, as_json=args.json, show=_show_verified)


def _show_verified(result: dict[str, Any]) -> None:
    for line in result["passed"]:
        print(f"✓ {line}")
    print(f"{result['entry']}: verified")


def inspect_main(argv: Sequence[str]) -> int:
    parser = _entry_parser("inspect", "Show the fold report of a repository entry.")
    parser.add_argument("--html", type=Path, metavar="OUT.html", help="write the report as a self-contained page")
    args = parser.parse_args(list(argv))
    if args.html is not None:
        work = partial(write_report_page, args.entry, args.html)
        return run("inspect", work, as_json=args.json, show=lambda done: print(f"wrote {done['html']}"))
    return run("inspect", lambda: read_manifest(args.entry), as_json=args.json, show=_show_report)


def write_report_page(entry: Path, out: Path) -> dict[str, Any]:
    """The fold report page of `entry` (service/ui/report_page.py) written to `out`."""
    page, calibration = entry_report_page(entry, read_manifest(entry))
    out.write_text(page, encoding="utf-8")
    return {"ok": True, "entry": str(entry), "html": str(out), "calibration": calibration}


def _show_report(manifest: dict[str, Any]) -> None:
    report = manifest["fold_report"]
    table = Table(title=f"{manifest['name']}: {report['summary']}")
    for column in ("BatchNorm", "action", "into", "reason", "max |Δ|"):
        table.add_column(column, overflow="fold")
    for entry in report["entries"]:
        error = entry.get("max_error")
        table.add_row(entry["bn"], entry["action"], entry.get("target") or "—", entry.get("reason") or "—",
                      "—" if error is None else f"{error:.2e}")  # fmt: skip
    console = stdout_console()
    console.print(table)
    variants = manifest["variants"]
    console.print(
        f"BatchNormalization nodes: unfolded {variants['unfolded']['batchnorm_nodes']}, "
        f"folded {variants['folded']['batchnorm_nodes']}; end-to-end max |Δ| {report.get('max_output_error')}; "
        f"tolerance {manifest['tolerance']}; source {manifest['provenance']['source']}"
    )
    for note in manifest.get("notes", []):
        console.print(f"note: {note}")
