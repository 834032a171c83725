"""The fold report page of an entry on disk, for `bnfold inspect ENTRY --html OUT.html` (no service running).

The calibration agreement is measured afresh (calibration.measure_calibration: both variants in
onnxruntime on calibration.npz); when that fails (a missing or broken file) the page says so instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bnfold.service.ui.calibration import measure_calibration
from bnfold.service.ui.report_page import report_page


def entry_report_page(entry: Path, manifest: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]] | None]:
    """The HTML page of the entry and the calibration rows it shows (None when they could not be measured)."""
    try:
        rows: list[dict[str, Any]] | None = measure_calibration(entry, manifest)
        batch = manifest["calibration"].get("batch_size") or "all"
        source = f"measured by bnfold inspect: both variants in onnxruntime on calibration.npz ({batch} samples)"
    except Exception as error:  # onnxruntime raises private exception types; numpy raises OSError/ValueError
        rows, source = None, f"not measured: {' '.join(str(error).split()) or type(error).__name__}"
    return report_page(manifest, rows, source), rows
