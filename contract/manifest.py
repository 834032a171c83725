"""The schema of model.json (docs/repository-format.md), in pydantic: the writer builds and validates an entry's
manifest through `Manifest`, the readers parse model.json with `parse_manifest`.

Unknown extra fields are kept (readers show them in metadata). Field order is the order of model.json.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from bnfold.contract.datatypes import V2_TO_NUMPY
from bnfold.contract.errors import ContractError
from bnfold.contract.layout import FORMAT, VARIANTS

Task = Literal["classification", "regression", "reconstruction"]


class TensorSpec(BaseModel):
    """One declared input or output: V2 datatype and shape (-1 = the dynamic batch axis 0)."""

    model_config = ConfigDict(frozen=True)
    name: str
    datatype: str
    shape: tuple[int, ...]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in V2_TO_NUMPY:
            raise ValueError(f"datatype {value!r} is not one of {', '.join(V2_TO_NUMPY)}")
        return value


class ExternalDataSpec(BaseModel):
    """A file an ONNX variant loads tensors from (its `location`, relative to the entry) and its hex SHA-256."""

    file: str
    sha256: str


class VariantSpec(BaseModel):
    """One ONNX file of the entry: its name, hex SHA-256, BatchNormalization node count, and the external data
    files it loads (none when every tensor is inside the .onnx file; manifests written before the field was
    added have none, and a reader refuses such an entry if its ONNX does refer to external data)."""

    file: str
    sha256: str
    batchnorm_nodes: int
    external_data: list[ExternalDataSpec] = []


class ToleranceSpec(BaseModel):
    """The agreement tolerance: max|Δ| ≤ atol + rtol · scale (bnfold.contract.agreement)."""

    atol: float
    rtol: float


class CalibrationSpec(BaseModel):
    file: str
    batch_size: int | None = None


class Manifest(BaseModel):
    """model.json; unknown extra fields are kept."""

    model_config = ConfigDict(extra="allow")
    format: str
    name: str
    task: Task
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    variants: dict[str, VariantSpec]
    tolerance: ToleranceSpec
    calibration: CalibrationSpec
    fold_report: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    notes: list[str] = []

    def to_json(self) -> dict[str, Any]:
        """The JSON document written as model.json."""
        return self.model_dump(mode="json")


def parse_manifest(raw: bytes | str | dict[str, Any], directory_name: str) -> Manifest:
    """Parse and check model.json of the entry directory `directory_name`; ContractError names the problem."""
    if not isinstance(raw, dict):
        try:
            raw = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise ContractError(f"model.json is not valid JSON ({error}); rebuild the entry") from None
    if not isinstance(raw, dict):
        raise ContractError(f"model.json holds a {type(raw).__name__}, not an object; rebuild the entry")
    if raw.get("format") != FORMAT:  # another format may have another schema: say so first
        raise ContractError(f"model.json format is {raw.get('format')!r}, expected {FORMAT!r}; rebuild the entry")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ContractError(f"model.json is invalid at {where}: {first['msg']}") from None
    check_manifest(manifest, directory_name)
    return manifest


def check_manifest(manifest: Manifest, directory_name: str) -> None:
    """The rules a schema cannot state: format, name = directory, both variants, some inputs and outputs."""
    if manifest.format != FORMAT:
        raise ContractError(f"model.json format is {manifest.format!r}, expected {FORMAT!r}; rebuild the entry")
    if manifest.name != directory_name:
        raise ContractError(f"model.json name {manifest.name!r} differs from its directory {directory_name!r}")
    missing = [variant for variant in VARIANTS if variant not in manifest.variants]
    if missing:
        raise ContractError(f"model.json has no variant {missing[0]!r}; both 'folded' and 'unfolded' are needed")
    if not manifest.inputs or not manifest.outputs:
        raise ContractError("model.json declares no inputs or no outputs")
