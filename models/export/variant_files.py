"""Write one ONNX variant into an entry directory, with its tensors inline or in one external data file.

A protobuf message cannot exceed 2 GiB, so a model whose tensors are larger must keep them in an external
data file. A variant is written with external data when its tensors exceed `external_data_above` bytes
(DEFAULT_EXTERNAL_DATA_ABOVE, 1.5 GB, leaves room for the graph itself) or when the source model kept its
tensors externally. Then every tensor of at least SMALL_TENSOR_BYTES goes, in graph order, into
`<variant file>.data` next to `<variant file>` (its location relative to the entry, as the contract requires);
smaller tensors (axes, shapes, BatchNorm statistics of narrow layers) stay inline, where onnx's shape
inference can read them. A model with no such tensor gets no data file. The file names and their SHA-256 are what
model.json records (`variants.*.external_data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from bnfold.contract.hashing import sha256_file

DEFAULT_EXTERNAL_DATA_ABOVE = 1_500_000_000
SMALL_TENSOR_BYTES = 1024
DATA_SUFFIX = ".data"


@dataclass(frozen=True)
class WrittenVariant:
    """A variant as written: its ONNX file, SHA-256, and external data files with theirs."""

    path: Path
    sha256: str
    external_data: list[dict[str, str]]

    def manifest_fields(self) -> dict[str, Any]:
        """The `file`, `sha256` and `external_data` fields of model.json's variant."""
        return {"file": self.path.name, "sha256": self.sha256, "external_data": self.external_data}


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of the main graph's initializers: the part of a model that can outgrow protobuf."""
    return sum(tensor.ByteSize() for tensor in model.graph.initializer)


def needs_external_data(model: onnx.ModelProto, source_external: bool, external_data_above: int) -> bool:
    """External data when the source used it or the tensors exceed the threshold."""
    return source_external or tensor_bytes(model) > external_data_above


def write_variant(model: onnx.ModelProto, directory: Path, file_name: str, external: bool) -> WrittenVariant:
    """Write `model` as directory/file_name (plus directory/file_name.data when `external`); `model` is unchanged."""
    path = directory / file_name
    if not external:
        onnx.save_model(model, path)
        return WrittenVariant(path, sha256_file(path), [])
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model moves the tensors out of the proto it is given
    location = file_name + DATA_SUFFIX
    onnx.save_model(
        copy,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=SMALL_TENSOR_BYTES,
    )
    data = directory / location
    files = [{"file": location, "sha256": sha256_file(data)}] if data.exists() else []
    return WrittenVariant(path, sha256_file(path), files)
