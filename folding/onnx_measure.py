"""Measure a fold on example inputs: per BatchNorm and end to end, with onnxruntime (no optimisations).

Each fold is measured at its *probe*: the BN's output when it went into the previous layer or was
lowered, the next layer's output when it went into that one. Where a later fold removed the probe (a
chain Conv → BN → BN), the error is measured at the value that replaced it further down, so it includes
the later folds too. Errors are max |folded − unfolded| (bnfold.contract.agreement.discrepancy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from bnfold.contract.agreement import discrepancy
from bnfold.folding.errors import FoldingError
from bnfold.folding.report import FoldReport
from bnfold.messages import first_line


def measure_fold(
    original: onnx.ModelProto,
    folded: onnx.ModelProto,
    example_inputs: Mapping[str, NDArray[np.generic]],
    report: FoldReport,
    probes: Mapping[str, str],
    superseded: Mapping[str, str],
) -> FoldReport:
    """A copy of `report` with max_error on each measured entry and max_output_error filled in."""
    where = {bn: _resolve(probe, superseded) for bn, probe in probes.items()}
    outputs = [value.name for value in original.graph.output]
    names = outputs + sorted(set(where.values()) - set(outputs))
    reference = run_all_optimisations_off(_with_outputs(original, names), example_inputs)
    candidate = run_all_optimisations_off(_with_outputs(folded, names), example_inputs)
    entries = [
        replace(entry, max_error=discrepancy(candidate[where[entry.bn]], reference[where[entry.bn]]).max_abs)
        if entry.bn in where
        else entry
        for entry in report.entries
    ]
    worst = max((discrepancy(candidate[name], reference[name]).max_abs for name in outputs), default=0.0)
    return FoldReport(entries=entries, max_output_error=worst)


def run_all_optimisations_off(
    model: onnx.ModelProto, feeds: Mapping[str, NDArray[np.generic]]
) -> dict[str, NDArray[np.generic]]:
    """Run `model` on CPU with every onnxruntime graph optimisation disabled; outputs by name."""
    weights = {initializer.name for initializer in model.graph.initializer}  # IR < 4 lists them as inputs
    expected = [value.name for value in model.graph.input if value.name not in weights]
    missing = sorted(set(expected) - set(feeds))
    if missing:
        raise FoldingError(f"example_inputs lacks {missing}; give one array per graph input {expected}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        results = session.run(names, {name: np.asarray(feeds[name]) for name in expected})
    except Exception as error:  # onnxruntime raises its own exception types
        raise FoldingError(f"onnxruntime could not run the model on example_inputs ({first_line(error)})") from error
    return {name: np.asarray(result) for name, result in zip(names, results, strict=True)}


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are exactly `names`, in that order."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    existing = {value.name: value for value in model.graph.output}
    del probed.graph.output[:]
    for name in names:
        probed.graph.output.append(existing[name] if name in existing else onnx.ValueInfoProto(name=name))
    return probed


def _resolve(probe: str, superseded: Mapping[str, str]) -> str:
    seen = {probe}
    while probe in superseded:
        probe = superseded[probe]
        if probe in seen:
            break
        seen.add(probe)
    return probe
