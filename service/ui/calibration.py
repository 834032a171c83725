"""Calibration agreement per output, as rows of the report page.

The service has it from its load-time gate (`ServedModel.calibration`); `bnfold inspect --html` measures it
the same way: both ONNX files in onnxruntime (graph optimisation off, so the unfolded BatchNormalization
nodes run as written) on the entry's calibration.npz, compared by the service's agreement rule
(`max|f − u| ≤ atol + rtol · max|u|`, per output, in float64; arg-max too for classifiers).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bnfold.service.equivalence import Equivalence, compare, finite_or_none


def agreement_rows(result: Equivalence, atol: float, rtol: float) -> list[dict[str, Any]]:
    """One row per output: max |Δ|, relative Δ, the bound atol + rtol·max|u|, within, arg-max agreement."""
    rows = []
    for output in result.outputs:
        found = output.discrepancy
        rows.append(
            {
                "output": output.name,
                "max_abs": finite_or_none(found.max_abs),
                "max_rel": finite_or_none(found.max_rel),
                "bound": finite_or_none(output.bound),
                "within": output.within_tolerance,
                "argmax_agree": output.argmax_agree,
            }
        )
    return rows


def measure_calibration(directory: Path, manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run both variants of the entry on calibration.npz and compare them (rows of `agreement_rows`)."""
    with np.load(directory / manifest["calibration"]["file"], allow_pickle=False) as archive:
        feeds = {spec["name"]: archive[spec["name"]] for spec in manifest["inputs"]}
    outputs = {
        variant: _run(directory / manifest["variants"][variant]["file"], feeds) for variant in ("folded", "unfolded")
    }
    tolerance = manifest["tolerance"]
    classifier = manifest.get("task") == "classification"
    result = compare(outputs["folded"], outputs["unfolded"], tolerance["atol"], tolerance["rtol"], classifier)
    return agreement_rows(result, tolerance["atol"], tolerance["rtol"])


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))
