"""Candidates folded on the ONNX side with `folding.onnx_fold.fold_onnx`: `.onnx` files and `.pt2` archives.

- `model.onnx`: unfolded.onnx is the input graph as given (with the user's tensor names, if any); its
  external data (if any) is resolved relative to the model file, whatever the working directory, and the
  entry keeps it in its own files; folded.onnx is the fold's result. A model with external data, or over
  1 GiB of tensors (the size rule of folding.onnx_files), is folded on the file path (fold_onnx_file): its
  tensors stay memory-mapped from the source's files until the variants are written, and no step holds or
  serialises it as one protobuf message (the user's names are then given to the folded and unfolded graphs
  after the fold); any other is folded in memory (fold_onnx), renamed first. There is no PyTorch model, so
  both variants are checked against the unfolded graph run in onnxruntime. Axis 0 of every input must be
  dynamic (the repository's batch axis). The calibration batch is the user's samples (--calibration: a
  .npy for one input, else a .npz keyed by the input names, checked against each input's dtype and dims by
  models/export/calibration_samples.py), or 16 seeded standard-normal samples per input, shaped by the
  graph's static dims (or --input-shape); no samples are invented for an integer or bool input (token
  ids, masks): those need --calibration. --input-names / --output-names rename the graph's values
  (models/export/onnx_names.py), so both variants carry the new names and the .npz keys are the new
  input names.
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
from bnfold.contract.datatypes import v2_name
from bnfold.contract.errors import ContractError
from bnfold.folding.onnx_files import by_file, check_external_files, has_external_data
from bnfold.folding.onnx_fold import fold_onnx, fold_onnx_file
from bnfold.folding.report import FoldReport
from bnfold.models.errors import BadInputError, UsageError
from bnfold.models.export.calibration_samples import InputSlot, match_samples, read_samples
from bnfold.models.export.choices import UserChoices
from bnfold.models.export.manifest import Candidate
from bnfold.models.export.onnx_names import graph_inputs, renamed
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
# tf2onnx always runs TensorFlow's constant folding, which multiplies a Conv2D's BatchNorm into the Conv
# weights (Mul(Conv2D(x, W), s) → Conv2D(x, W·s)); there is no option to keep it (tf2onnx 1.17, TF 2.21).
TF2ONNX_NO_BATCHNORM_NOTE = (
    f"{NO_BATCHNORM_NOTE}. It was converted by tf2onnx, whose TensorFlow constant folding already fuses a "
    "Conv2D's BatchNorm into the Conv: nothing is left to fold, and there is no unfused graph to verify against"
)

FLOAT_TYPES: dict[int, type[np.floating[Any]]] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
}


def candidate_from_onnx(
    path: Path, weights: Path | None, input_shape: str | None, progress: Progress, choices: UserChoices | None = None
) -> Candidate:
    """Fold an ONNX file (its inputs and outputs renamed first when the user named them), calibrated on the
    user's samples or on seeded ones; both variants are compared with the graph itself in onnxruntime."""
    chosen = choices or UserChoices()
    if weights is not None:
        raise UsageError("an ONNX file carries its own weights; drop --weights")
    if chosen.calibration is not None and input_shape is not None:
        raise UsageError("--calibration gives the shapes of an ONNX graph's inputs; drop --input-shape")
    if not path.is_file():
        raise BadInputError(f"ONNX file {path} not found; check the path in --model")
    samples = None if chosen.calibration is None else read_samples(chosen.calibration)
    source, external = load_onnx_source(path)
    model = renamed(source, chosen.input_names, chosen.output_names)
    values = graph_inputs(model)
    if samples is None:
        inputs = {value.name: _random_input(value, input_shape) for value in values}
    else:
        inputs = match_samples(samples, [_slot(value) for value in values])
    if external or by_file(source):
        names = _new_names(source, model)
        old_names = {new: old for old, new in names.items()}
        producer = source.producer_name
        del source, model  # an inline model over 1 GiB is read again by the fold, not held twice
        with progress.step("folding (ONNX, tensors memory-mapped)"):
            result = fold_onnx_file(path, {old_names.get(name, name): array for name, array in inputs.items()})
        for graph_model in (result.original, result.model):
            _rename_ir(graph_model, names)
        candidate = _candidate(result.original, result.model, result.report, inputs, None, str(path), None, producer)
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
        model = quiet_export(loaded.module, (loaded.calibration,), loaded.output_names, loaded.input_names)
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
    producer: str | None = None,
) -> Candidate:
    """The candidate of a fold; a model without BatchNorm gets the note and unfolded as its folded variant."""
    producer = producer if producer is not None else _producer(unfolded)
    note = TF2ONNX_NO_BATCHNORM_NOTE if producer == "tf2onnx" else ONNX_NO_BATCHNORM_NOTE
    notes = [note] if report.total == 0 else []
    dtype = _tolerance_dtype(unfolded, inputs)
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


def _producer(model: onnx.ModelProto | ir.Model) -> str:
    return model.producer_name or ""


def _new_names(source: onnx.ModelProto, model: onnx.ModelProto) -> dict[str, str]:
    """Old name → new name of each graph input and output `renamed` changed (empty when nothing was)."""
    pairs = [
        *zip((v.name for v in graph_inputs(source)), (v.name for v in graph_inputs(model)), strict=True),
        *zip((v.name for v in source.graph.output), (v.name for v in model.graph.output), strict=True),
    ]
    return {old: new for old, new in pairs if old != new}


def _rename_ir(model: ir.Model, names: dict[str, str]) -> None:
    """Give the graph inputs and outputs of an onnx-ir model their new names (every use follows the value)."""
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.name in names:
            value.name = names[value.name]


def _slot(value: onnx.ValueInfoProto) -> InputSlot:
    """What the samples of graph input `value` must be: its dtype and its per-sample dims."""
    tensor = value.type.tensor_type
    dims = _batch_first(value)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        v2_name(dtype)
    except (KeyError, ValueError, TypeError, ContractError):
        raise BadInputError(
            f"input {value.name!r} is {onnx.TensorProto.DataType.Name(tensor.elem_type)}, which the V2 protocol "
            "cannot carry; give the graph float, integer or bool inputs"
        ) from None
    return InputSlot(value.name, dtype, tuple(_dim(dim) for dim in dims[1:]))


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str:
    return dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")


def _batch_first(value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    """The input's dims; BadInputError unless axis 0 is dynamic (the repository's batch axis)."""
    dims = list(value.type.tensor_type.shape.dim)
    if not dims or dims[0].HasField("dim_value"):
        raise BadInputError(
            f"input {value.name!r} has no dynamic batch axis 0; re-export the model with a dynamic batch dimension"
        )
    return dims


def _random_input(value: onnx.ValueInfoProto, input_shape: str | None) -> NDArray[Any]:
    """Seeded standard-normal samples for a float input (no samples can be invented for any other)."""
    tensor = value.type.tensor_type
    if tensor.elem_type not in FLOAT_TYPES:
        raise BadInputError(
            f"input {value.name!r} is {onnx.TensorProto.DataType.Name(tensor.elem_type).lower()}, and seeded random "
            "samples stand in only for float32/float64 inputs; pass --calibration FILE with real samples of every "
            "input"
        )
    dims = _batch_first(value)
    if input_shape is not None:
        shape = parse_shape(input_shape)
    elif all(dim.HasField("dim_value") for dim in dims[1:]):
        shape = (1, *(dim.dim_value for dim in dims[1:]))
    else:
        raise BadInputError(f"input {value.name!r} has symbolic dims besides the batch; pass --input-shape")
    return random_batch(shape).numpy().astype(FLOAT_TYPES[tensor.elem_type])


def _tolerance_dtype(model: onnx.ModelProto | ir.Model, inputs: dict[str, NDArray[Any]]) -> str:
    """The precision the agreement tolerance is for: the first float input's, else the first float output's
    (a graph reading token ids computes in its outputs' precision), else float32."""
    for array in inputs.values():
        if array.dtype.kind == "f":
            return str(array.dtype)
    if isinstance(model, ir.Model):
        types = [int(value.dtype) for value in model.graph.outputs if value.dtype is not None]
    else:
        types = [value.type.tensor_type.elem_type for value in model.graph.output]
    for elem_type in types:
        if elem_type in FLOAT_TYPES:
            return str(np.dtype(FLOAT_TYPES[elem_type]))
    return "float32"
