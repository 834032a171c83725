"""From a loaded PyTorch model to a Candidate: fold, export both variants, record the reference outputs.

unfolded.onnx is the original model exported with folding.export.export_onnx (dynamo exporter,
optimize=False, so its BatchNormalization nodes survive); folded.onnx is the export of `folding.fold`'s
result. A forward with several inputs is folded and exported with all of them, in forward's order
(models/export/user_inputs.py). A model without any BatchNorm is allowed: folded.onnx is then
byte-identical to unfolded.onnx and the entry's notes say so. The tolerance is the float32 default of
bnfold.contract.agreement.
"""

from __future__ import annotations

import logging
import warnings

import onnx
import torch
from torch import Tensor, nn

from bnfold.contract.agreement import Tolerance
from bnfold.folding import fold
from bnfold.folding.export import export_onnx
from bnfold.models.export.manifest import Candidate
from bnfold.models.export.spec import LoadedModel, output_list
from bnfold.models.progress import Progress

NO_BATCHNORM_NOTE = "the model has no BatchNorm: folded.onnx equals unfolded.onnx"


def quiet_export(
    model: nn.Module, example: tuple[Tensor, ...], output_names: list[str], input_names: list[str]
) -> onnx.ModelProto:
    """export_onnx, without the exporter's warnings and log lines (they are not about the user's model)."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return export_onnx(model, example, input_names=input_names, output_names=output_names)
    finally:
        exporter_log.setLevel(level)


def candidate_from_model(loaded: LoadedModel, progress: Progress) -> Candidate:
    """Fold and export `loaded`; raises FoldingError (folding side) when it cannot be captured or exported."""
    example = loaded.example
    with progress.step("folding"):
        result = fold(loaded.module, example)
    with progress.step("exporting unfolded.onnx"):
        unfolded = quiet_export(loaded.module, example, loaded.output_names, loaded.input_names)
    notes = []
    if result.report.total == 0:
        folded, notes = unfolded, [NO_BATCHNORM_NOTE]
    else:
        with progress.step("exporting folded.onnx"):
            folded = quiet_export(result.model, example, loaded.output_names, loaded.input_names)
    with torch.no_grad():
        output = loaded.module(*example)
    outputs = output_list(output)
    return Candidate(
        source=loaded.source,
        task=loaded.task,
        inputs={name: batch.numpy() for name, batch in zip(loaded.input_names, example, strict=True)},
        output_names=loaded.output_names,
        reference=[value.detach().numpy() for value in outputs],
        unfolded=unfolded,
        folded=folded,
        fold_report=result.report.to_json(),
        tolerance=Tolerance.for_dtype("float32").to_json(),
        weights_sha256=loaded.weights_sha256,
        metrics=loaded.metrics,
        notes=notes,
    )
