"""Read a model repository (docs/repository-format.md): entry discovery, model.json, sha256, calibration.

Nothing here runs a model. Every refusal is an `EntryError` whose message is the reason shown in the
model's metadata and log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from bnfold.service.datatypes import V2_TO_NUMPY

FORMAT = "bnfold-repository/1"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VARIANTS = ("folded", "unfolded")
log = logging.getLogger("bnfold.service")


class EntryError(Exception):
    """A repository entry cannot be served; the message is the reason."""


class TensorSpec(BaseModel):
    """One declared input or output: V2 datatype and shape (-1 = dynamic batch axis)."""

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


class VariantSpec(BaseModel):
    file: str
    sha256: str
    batchnorm_nodes: int


class ToleranceSpec(BaseModel):
    atol: float
    rtol: float


class CalibrationSpec(BaseModel):
    file: str
    batch_size: int | None = None


class Manifest(BaseModel):
    """model.json; unknown extra fields are kept (they are shown in metadata)."""

    model_config = ConfigDict(extra="allow")
    format: str
    name: str
    task: Literal["classification", "regression", "reconstruction"]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    variants: dict[str, VariantSpec]
    tolerance: ToleranceSpec
    calibration: CalibrationSpec
    fold_report: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


@dataclass(frozen=True)
class Entry:
    """A repository entry whose manifest is valid and whose files are present with the declared digests."""

    directory: Path
    manifest: Manifest

    def variant_path(self, variant: str) -> Path:
        return self.directory / self.manifest.variants[variant].file


def discover(repository: Path) -> list[str]:
    """Names of the entry directories, sorted; hidden ('.'-prefixed) ones and invalid names are skipped."""
    names = []
    for child in sorted(repository.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if NAME_PATTERN.match(child.name):
            names.append(child.name)
        else:
            log.warning("skipping %s: directory name does not match %s", child, NAME_PATTERN.pattern)
    return names


def read_entry(directory: Path) -> Entry:
    """Validate model.json and the digests of both ONNX files; EntryError names what is wrong."""
    manifest = read_manifest(directory)
    for variant in VARIANTS:
        spec = manifest.variants[variant]
        verify_sha256(directory / spec.file, spec.sha256)
    return Entry(directory=directory, manifest=manifest)


def read_manifest(directory: Path) -> Manifest:
    path = directory / "model.json"
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise EntryError(f"{path} is missing; rebuild the entry with bnfold fold-and-export") from None
    except (OSError, ValueError) as error:
        raise EntryError(f"{path} is not valid JSON ({error}); rebuild the entry") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise EntryError(f"{path} is invalid at {where}: {first['msg']}") from None
    _check_manifest(manifest, directory)
    return manifest


def _check_manifest(manifest: Manifest, directory: Path) -> None:
    if manifest.format != FORMAT:
        raise EntryError(f"model.json format is {manifest.format!r}, this server reads {FORMAT!r}")
    if manifest.name != directory.name:
        raise EntryError(f"model.json name {manifest.name!r} differs from its directory {directory.name!r}")
    missing = [variant for variant in VARIANTS if variant not in manifest.variants]
    if missing:
        raise EntryError(f"model.json has no variant {missing[0]!r}; both 'folded' and 'unfolded' are needed")
    if not manifest.inputs or not manifest.outputs:
        raise EntryError("model.json declares no inputs or no outputs")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """EntryError when the file is missing or its digest is not the declared one (truncated/replaced)."""
    if not path.is_file():
        raise EntryError(f"{path.name} is missing; rebuild the entry with bnfold fold-and-export")
    actual = sha256_of(path)
    if actual != expected.lower():
        raise EntryError(
            f"sha256 of {path.name} is {actual[:16]}..., model.json says {expected[:16]}...: "
            "the file was truncated or replaced; rebuild the entry"
        )


def load_calibration(entry: Entry) -> dict[str, np.ndarray]:
    """The calibration batch, one array per declared input, checked against the declared datatype/shape."""
    path = entry.directory / entry.manifest.calibration.file
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise EntryError(f"calibration file {path.name} is missing; rebuild the entry") from None
    except (OSError, ValueError, EOFError) as error:
        raise EntryError(f"calibration file {path.name} cannot be read ({error}); rebuild the entry") from None
    for spec in entry.manifest.inputs:
        _check_calibration_array(arrays, spec)
    return {spec.name: arrays[spec.name] for spec in entry.manifest.inputs}


def _check_calibration_array(arrays: dict[str, np.ndarray], spec: TensorSpec) -> None:
    if spec.name not in arrays:
        raise EntryError(f"calibration has no array for input {spec.name!r} (it has {sorted(arrays)})")
    array = arrays[spec.name]
    if array.dtype != V2_TO_NUMPY[spec.datatype]:
        raise EntryError(f"calibration input {spec.name!r} is {array.dtype}, model.json says {spec.datatype}")
    if not shape_matches(array.shape, spec.shape):
        raise EntryError(f"calibration input {spec.name!r} has shape {list(array.shape)}, expected {spec.shape}")


def shape_matches(actual: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    """True when ranks agree and every declared dimension is -1 or equal."""
    if len(actual) != len(declared):
        return False
    return all(want in (-1, got) for got, want in zip(actual, declared, strict=True))
