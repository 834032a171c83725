"""Write one ONNX variant into an entry directory, with its tensors inline or in one external data file.

A protobuf message cannot exceed 2 GiB, so a model whose tensors are larger must keep them in an external
data file. A variant is written with external data when its tensors exceed `external_data_above` bytes
(DEFAULT_EXTERNAL_DATA_ABOVE: 1 GiB, folding.onnx_files.LARGE_MODEL_BYTES, the size above which the fold
itself takes the file path) or when the source model kept its tensors externally. Then every tensor of at
least SMALL_TENSOR_BYTES goes, in graph order, into `<variant file>.data` next to `<variant file>` (its
location relative to the entry, as the contract requires); smaller tensors (axes, shapes, BatchNorm
statistics of narrow layers) stay inline, where onnx's shape inference can read them. A model with no such
tensor gets no data file. The file names and their SHA-256 are what model.json records
(`variants.*.external_data`).

A variant is an in-memory ModelProto (a PyTorch export, a small ONNX file folded in memory) or an onnx_ir
model from the file path (folding.onnx_fold.fold_onnx_file, tensors memory-mapped from the source's files).
Both are written with external data by folding.onnx_files.save_model, which streams each tensor into the
data file and never serialises the whole model; a small ModelProto written inline is saved as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from bnfold.contract.hashing import sha256_file
from bnfold.folding.onnx_files import DATA_SUFFIX, LARGE_MODEL_BYTES, inline_tensor_bytes, save_model
from bnfold.folding.onnx_files import tensor_bytes as ir_tensor_bytes

DEFAULT_EXTERNAL_DATA_ABOVE = LARGE_MODEL_BYTES

__all__ = ["DATA_SUFFIX", "DEFAULT_EXTERNAL_DATA_ABOVE", "WrittenVariant", "needs_external_data", "write_variant"]

Variant = onnx.ModelProto | ir.Model


@dataclass(frozen=True)
class WrittenVariant:
    """A variant as written: its ONNX file, SHA-256, and external data files with theirs."""

    path: Path
    sha256: str
    external_data: list[dict[str, str]]

    def manifest_fields(self) -> dict[str, Any]:
        """The `file`, `sha256` and `external_data` fields of model.json's variant."""
        return {"file": self.path.name, "sha256": self.sha256, "external_data": self.external_data}


def tensor_bytes(model: Variant) -> int:
    """Size of the main graph's initializers: the part of a model that can outgrow protobuf."""
    return ir_tensor_bytes(model) if isinstance(model, ir.Model) else inline_tensor_bytes(model)


def needs_external_data(model: Variant, source_external: bool, external_data_above: int) -> bool:
    """External data when the source used it or the tensors exceed the threshold."""
    return source_external or tensor_bytes(model) > external_data_above


def write_variant(model: Variant, directory: Path, file_name: str, external: bool) -> WrittenVariant:
    """Write `model` as directory/file_name (plus directory/file_name.data when `external` and a tensor is large
    enough); `model` is unchanged."""
    path = directory / file_name
    if isinstance(model, onnx.ModelProto) and not external:
        onnx.save_model(model, path)
        return WrittenVariant(path, sha256_file(path), [])
    lazy = model if isinstance(model, ir.Model) else ir.serde.deserialize_model(model)
    data = save_model(lazy, path, external)
    files = [{"file": data.name, "sha256": sha256_file(data)}] if data is not None else []
    return WrittenVariant(path, sha256_file(path), files)
