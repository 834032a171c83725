"""Candidates folded on the ONNX side with `folding.onnx_fold.fold_onnx`: `.onnx` files and `.pt2` archives.

- `model.onnx`: unfolded.onnx is the input graph as given; its external data (if any) is resolved relative
  to the model file, whatever the working directory, and the entry keeps it in its own files; folded.onnx
  is the fold's result. A model with external data, or over 1 GiB of tensors (the size rule of
  folding.onnx_files), is folded on the file path (fold_onnx_file): its tensors stay memory-mapped from
  the source's files until the variants are written, and no step holds or serialises it as one protobuf
  message; any other is folded in memory (fold_onnx). There is no PyTorch model, so both variants are
  checked against the unfolded graph run in onnxruntime. Axis 0 of every input must be dynamic (the
  repository's batch axis); the calibration batch is 16 seeded standard-normal samples per float input,
  shaped by the graph's static dims (or --input-shape).
- `model.pt2` (torch.export archive): the archive's graph is fixed (it cannot be put back into eval mode
  nor re-traced into modules), so it is exported to ONNX as it is and folded with fold_onnx; the reference
  is the archive's own module run by PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch
from numpy.typing import NDArray

from bnfold.contract.agreement import Tolerance
from bnfold.folding.onnx_files import by_file, check_external_files, has_external_data
from bnfold.folding.onnx_fold import fold_onnx, fold_onnx_file
from bnfold.folding.report import FoldReport
from bnfold.models.errors import BadInputError, UsageError
from bnfold.models.export.manifest import Candidate
from bnfold.models.export.spec import LoadedModel, parse_shape, random_batch
from bnfold.models.export.torch_candidate import NO_BATCHNORM_NOTE, quiet_export
from bnfold.models.progress import Progress

# An ONNX file may have no BatchNorm because its exporter fused it already: torch.onnx.export does with its
# defaults (dynamo=True, optimize=True) and so does the legacy exporter (dynamo=False) with its default
# constant folding. Re-exported with these options the BatchNormalization nodes stay (torch 2.13).
ONNX_NO_BATCHNORM_NOTE = (
    f"{NO_BATCHNORM_NOTE}. If it was exported from PyTorch, the exporter may have fused the BatchNorm into "
    "the convolutions already (torch.onnx.export does by default): re-export with "
    "torch.onnx.export(model, args, dynamo=True, optimize=False), or with dynamo=False and "
    "do_constant_folding=False, so that bnfold folds it and verifies the fold"
)

FLOAT_TYPES: dict[int, type[np.floating[Any]]] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
}


def candidate_from_onnx(path: Path, weights: Path | None, input_shape: str | None, progress: Progress) -> Candidate:
    """Fold an ONNX file; both variants are compared with the file itself in onnxruntime."""
    if weights is not None:
        raise UsageError("an ONNX file carries its own weights; drop --weights")
    if not path.is_file():
        raise BadInputError(f"ONNX file {path} not found; check the path in --model")
    model, external = load_onnx_source(path)
    inputs = {value.name: _calibration_input(value, input_shape) for value in _real_inputs(model)}
    if external or by_file(model):
        del model  # an inline model over 1 GiB is read again by the fold, not held twice
        with progress.step("folding (ONNX, tensors memory-mapped)"):
            result = fold_onnx_file(path, inputs)
        candidate = _candidate(result.original, result.model, result.report, inputs, None, str(path), None)
    else:
        candidate = _fold(model, inputs, None, str(path), None, progress)
    candidate.source_external_data = external
    return candidate


def load_onnx_source(path: Path) -> tuple[onnx.ModelProto, bool]:
    """The model at `path` without its external data, and whether it has any; refuses a file that is no ONNX
    model, and external data that is missing, outside the model file's directory or too short (resolved
    relative to the model file, never the working directory)."""
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:
        raise BadInputError(f"{path} is not an ONNX model (cannot parse it); give a .onnx file") from None
    external = has_external_data(model)
    try:
        check_external_files(path, model)
    except ValueError as error:
        raise BadInputError(
            f"cannot load the external data of {path} ({error}); keep the data files where the model names them, "
            "relative to the model file"
        ) from None
    return model, external


def candidate_from_archive(loaded: LoadedModel, progress: Progress) -> Candidate:
    """Export a torch.export archive's module as it is, then fold the ONNX graph."""
    for module in loaded.module.modules():
        module.training = False  # the archive's graph is fixed; the flag only silences export's mode check
    with progress.step("exporting unfolded.onnx"):
        model = quiet_export(loaded.module, (loaded.calibration,), loaded.output_names, loaded.input_name)
    with torch.no_grad():
        output = loaded.module(loaded.calibration)
    outputs = list(output) if isinstance(output, tuple | list) else [output]
    reference = [value.detach().numpy() for value in outputs]
    inputs = {loaded.input_name: loaded.calibration.numpy()}
    return _fold(model, inputs, reference, loaded.source, loaded.weights_sha256, progress)


def _fold(
    model: onnx.ModelProto,
    inputs: dict[str, NDArray[Any]],
    reference: list[NDArray[Any]] | None,
    source: str,
    weights_sha256: str | None,
    progress: Progress,
) -> Candidate:
    with progress.step("folding (ONNX)"):
        result = fold_onnx(model, inputs)
    return _candidate(model, result.model, result.report, inputs, reference, source, weights_sha256)


def _candidate(
    unfolded: onnx.ModelProto | ir.Model,
    folded: onnx.ModelProto | ir.Model,
    report: FoldReport,
    inputs: dict[str, NDArray[Any]],
    reference: list[NDArray[Any]] | None,
    source: str,
    weights_sha256: str | None,
) -> Candidate:
    """The candidate of a fold; a model without BatchNorm gets the note and unfolded as its folded variant."""
    notes = [ONNX_NO_BATCHNORM_NOTE] if report.total == 0 else []
    dtype = str(next(iter(inputs.values())).dtype)
    return Candidate(
        source=source,
        task="regression",
        inputs=inputs,
        output_names=_output_names(unfolded),
        reference=reference,
        unfolded=unfolded,
        folded=unfolded if report.total == 0 else folded,
        fold_report=report.to_json(),
        tolerance=Tolerance.for_dtype(dtype).to_json(),
        weights_sha256=weights_sha256,
        notes=notes,
    )


def _output_names(model: onnx.ModelProto | ir.Model) -> list[str]:
    if isinstance(model, ir.Model):
        return [str(value.name) for value in model.graph.outputs]
    return [output.name for output in model.graph.output]


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (IR < 4 lists initializers as inputs too)."""
    initializers = {initializer.name for initializer in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _calibration_input(value: onnx.ValueInfoProto, input_shape: str | None) -> NDArray[Any]:
    tensor = value.type.tensor_type
    if tensor.elem_type not in FLOAT_TYPES:
        raise BadInputError(f"input {value.name!r} is not float32/float64; fold-and-export calibrates float inputs")
    dims = tensor.shape.dim
    if not dims or dims[0].HasField("dim_value"):
        raise BadInputError(
            f"input {value.name!r} has no dynamic batch axis 0; re-export the model with a dynamic batch dimension"
        )
    if input_shape is not None:
        shape = parse_shape(input_shape)
    elif all(dim.HasField("dim_value") for dim in dims[1:]):
        shape = (1, *(dim.dim_value for dim in dims[1:]))
    else:
        raise BadInputError(f"input {value.name!r} has symbolic dims besides the batch; pass --input-shape")
    return random_batch(shape).numpy().astype(FLOAT_TYPES[tensor.elem_type])
