"""Measure a fold on example inputs: per BatchNorm and end to end, with onnxruntime (no optimisations).

Each fold is measured at its *probe*: the BN's output when it went into the previous layer or was
lowered, the next layer's output when it went into that one. Where a later fold removed the probe (a
chain Conv → BN → BN), the error is measured at the value that replaced it further down, so it includes
the later folds too. Errors are max |folded − unfolded| (bnfold.contract.agreement.discrepancy).

Both models are onnx_ir models and run the way every model runs here, small or larger than protobuf allows
(folding.onnx_files): onnxruntime opens the graph without its large tensors' data from a temporary file and
is given those tensors as initializers over their own memory (memory-mapped external data, or the fold's
arrays). No model is serialised whole, and no weight is copied. Weight pre-packing is off as well (a
pre-packed copy of every Gemm and MatMul weight per session would double a large model's memory); both
models run the same kernels.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from numpy.typing import NDArray

from bnfold.contract.agreement import discrepancy
from bnfold.folding.errors import FoldingError
from bnfold.folding.onnx_files import light_proto, ort_initializers, write_light
from bnfold.folding.report import FoldReport
from bnfold.messages import first_line


def measure_fold(
    original: ir.Model,
    folded: ir.Model,
    example_inputs: Mapping[str, NDArray[np.generic]],
    report: FoldReport,
    probes: Mapping[str, str],
    superseded: Mapping[str, str],
) -> FoldReport:
    """A copy of `report` with max_error on each measured entry and max_output_error filled in."""
    where = {bn: _resolve(probe, superseded) for bn, probe in probes.items()}
    outputs = [str(value.name) for value in original.graph.outputs]
    names = outputs + sorted(set(where.values()) - set(outputs))
    reference = run_all_optimisations_off(original, example_inputs, names)
    candidate = run_all_optimisations_off(folded, example_inputs, names)
    entries = [
        replace(entry, max_error=discrepancy(candidate[where[entry.bn]], reference[where[entry.bn]]).max_abs)
        if entry.bn in where
        else entry
        for entry in report.entries
    ]
    worst = max((discrepancy(candidate[name], reference[name]).max_abs for name in outputs), default=0.0)
    return FoldReport(entries=entries, max_output_error=worst)


def run_all_optimisations_off(
    model: onnx.ModelProto | ir.Model,
    feeds: Mapping[str, NDArray[np.generic]],
    output_names: list[str] | None = None,
) -> dict[str, NDArray[np.generic]]:
    """Run `model` on CPU with every onnxruntime graph optimisation disabled; outputs by name: the graph's
    outputs, or exactly `output_names` (any values of the graph) in that order."""
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    proto = light_proto(model)
    if output_names is not None:
        _set_outputs(proto, output_names)
    weights = {initializer.name for initializer in proto.graph.initializer}  # IR < 4 lists them as inputs
    expected = [value.name for value in proto.graph.input if value.name not in weights]
    missing = sorted(set(expected) - set(feeds))
    if missing:
        raise FoldingError(f"example_inputs lacks {missing}; give one array per graph input {expected}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        initializers, arrays = ort_initializers(model, proto)  # `arrays` hold the memory the session reads
        for name, value in initializers:
            options.add_initializer(name, value)
        with tempfile.TemporaryDirectory(prefix="bnfold-run-") as scratch:
            path = write_light(proto, Path(scratch))
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        results = session.run(names, {name: np.asarray(feeds[name]) for name in expected})
        del session, arrays
    except Exception as error:  # onnxruntime raises its own exception types
        raise FoldingError(f"onnxruntime could not run the model on example_inputs ({first_line(error)})") from error
    return {name: np.asarray(result) for name, result in zip(names, results, strict=True)}


def _set_outputs(proto: onnx.ModelProto, names: list[str]) -> None:
    """Make the graph outputs of `proto` exactly `names`, in that order (a value that is no output yet gets
    an untyped ValueInfo: onnxruntime infers its type)."""
    existing = {value.name: value for value in proto.graph.output}
    chosen = [onnx.ValueInfoProto(name=name) for name in names]
    for value in chosen:
        if value.name in existing:
            value.CopyFrom(existing[value.name])
    del proto.graph.output[:]
    proto.graph.output.extend(chosen)


def _resolve(probe: str, superseded: Mapping[str, str]) -> str:
    seen = {probe}
    while probe in superseded:
        probe = superseded[probe]
        if probe in seen:
            break
        seen.add(probe)
    return probe
