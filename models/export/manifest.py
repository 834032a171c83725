"""Build model.json (docs/repository-format.md) from a verified candidate through the contract's schema
(bnfold.contract.manifest), so the writer cannot write what the readers refuse; no torch needed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from numpy.typing import NDArray

from bnfold.contract.datatypes import v2_name
from bnfold.contract.errors import ContractError
from bnfold.contract.layout import CALIBRATION_FILE, FORMAT
from bnfold.contract.manifest import Manifest
from bnfold.models.export.variant_files import WrittenVariant


@dataclass
class Candidate:
    """Everything a repository entry holds, before it is verified and written."""

    source: str
    task: str
    inputs: dict[str, NDArray[Any]]  # name → calibration batch
    output_names: list[str]
    reference: list[NDArray[Any]] | None  # outputs of the PyTorch model on the calibration batch
    # A ModelProto with its tensors loaded, or (ONNX files on the file path, folding.onnx_files) an onnx_ir
    # model whose tensors are memory-mapped from the source's files: written by models/export/variant_files.py.
    unfolded: onnx.ModelProto | ir.Model
    folded: onnx.ModelProto | ir.Model
    fold_report: dict[str, Any]
    tolerance: dict[str, float]
    weights_sha256: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source_external_data: bool = False  # the source kept tensors in external data: the entry does too


def _v2(dtype: np.dtype[Any]) -> str:
    try:
        return v2_name(dtype)
    except ContractError as error:
        raise ValueError(str(error)) from None


def tensor_spec(name: str, array: NDArray[Any]) -> dict[str, Any]:
    """{name, datatype, shape} with -1 for the dynamic batch axis 0."""
    return {"name": name, "datatype": _v2(array.dtype), "shape": [-1, *array.shape[1:]]}


def versions() -> dict[str, str]:
    """Installed versions of bnfold and the libraries that shaped the files."""
    found = {}
    for package in ("bnfold", "torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def build_manifest(
    name: str,
    candidate: Candidate,
    outputs: list[NDArray[Any]],
    batchnorm_nodes: dict[str, int],
    written: Mapping[str, WrittenVariant],
) -> dict[str, Any]:
    """model.json for `candidate`; `outputs` are the unfolded graph's outputs (for output dtypes and shapes),
    `written` the variants' files as written (names, SHA-256 of the ONNX file and of its external data).
    Validated by the contract's schema (pydantic ValidationError if a field is of the wrong type)."""
    document = {
        "format": FORMAT,
        "name": name,
        "task": candidate.task,
        "inputs": [tensor_spec(key, value) for key, value in candidate.inputs.items()],
        "outputs": [tensor_spec(key, value) for key, value in zip(candidate.output_names, outputs, strict=True)],
        "variants": {
            variant: {**written[variant].manifest_fields(), "batchnorm_nodes": batchnorm_nodes[variant]}
            for variant in ("unfolded", "folded")
        },
        "tolerance": candidate.tolerance,
        "calibration": {"file": CALIBRATION_FILE, "batch_size": len(next(iter(candidate.inputs.values())))},
        "fold_report": candidate.fold_report,
        "provenance": {
            "source": candidate.source,
            "weights_sha256": candidate.weights_sha256,
            "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "versions": versions(),
        },
        "metrics": candidate.metrics,
        "notes": candidate.notes,
    }
    return Manifest.model_validate(document).to_json()
