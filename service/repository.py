"""Read a model repository (docs/repository-format.md): entry discovery, model.json, sha256, calibration.

The format itself (names, schema, digests, calibration) is bnfold.contract's; this module applies it to a
directory. Nothing here runs a model. An entry only uses regular files inside its own directory, opened
without following links or blocking (bnfold.contract.entry_files). Every refusal is an `EntryError` whose
message is the reason shown in the model's metadata and log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnfold.contract.calibration import read_calibration
from bnfold.contract.calibration import shape_matches as shape_matches
from bnfold.contract.entry_files import entry_file, open_regular, read_regular
from bnfold.contract.errors import ContractError
from bnfold.contract.external_data import check_external_data
from bnfold.contract.hashing import sha256_stream
from bnfold.contract.layout import MANIFEST_FILE, NAME_PATTERN, VARIANTS, is_valid_name
from bnfold.contract.manifest import ExternalDataSpec, Manifest, TensorSpec, parse_manifest
from bnfold.contract.npz_limits import CalibrationLimits

__all__ = [
    "VARIANTS",
    "Entry",
    "EntryError",
    "Manifest",
    "TensorSpec",
    "discover",
    "load_calibration",
    "read_entry",
    "read_manifest",
    "shape_matches",
    "verify_sha256",
]
log = logging.getLogger("bnfold.service")


class EntryError(Exception):
    """A repository entry cannot be served; the message is the reason."""


@dataclass(frozen=True)
class Entry:
    """A repository entry whose manifest is valid and whose files are present with the declared digests."""

    directory: Path
    manifest: Manifest

    def variant_path(self, variant: str) -> Path:
        return self.directory / self.manifest.variants[variant].file

    def calibration_path(self) -> Path:
        return self.directory / self.manifest.calibration.file


def discover(repository: Path) -> list[str]:
    """Names of the entry directories, sorted; hidden ('.'-prefixed) ones and invalid names are skipped."""
    names = []
    for child in sorted(repository.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if is_valid_name(child.name):
            names.append(child.name)
        else:
            log.warning("skipping %r: directory name does not match %s", str(child), NAME_PATTERN.pattern)
    return names


def read_entry(directory: Path) -> Entry:
    """Validate model.json, the digests of both ONNX files and of every external data file they load (each a
    regular file inside the entry directory); EntryError names what is wrong."""
    manifest = read_manifest(directory)
    try:
        for variant in VARIANTS:
            entry_file(directory, manifest.variants[variant].file, f"{variant} variant")
        entry_file(directory, manifest.calibration.file, "calibration")
    except ContractError as error:
        raise EntryError(str(error)) from None
    for variant in VARIANTS:
        spec = manifest.variants[variant]
        verify_sha256(directory / spec.file, spec.sha256, f"{variant} variant")
        verify_external_data(directory, variant, spec.file, spec.external_data)
    return Entry(directory=directory, manifest=manifest)


def verify_external_data(directory: Path, variant: str, file: str, declared: list[ExternalDataSpec]) -> None:
    """EntryError unless the external data `file` loads is declared, inside the entry and of the declared digest."""
    try:
        check_external_data(directory, file, (directory / file).read_bytes(), declared, f"variants.{variant}")
    except ContractError as error:
        raise EntryError(str(error)) from None
    except OSError as error:
        raise EntryError(f"{file} cannot be read ({error.strerror}); rebuild the entry") from None


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE
    if not path.exists() and not path.is_symlink():
        raise EntryError(f"{path} is missing; rebuild the entry with bnfold fold-and-export")
    try:
        raw = read_regular(path, "manifest")
    except ContractError as error:
        raise EntryError(f"{path}: {error}") from None
    except OSError as error:
        raise EntryError(f"{path} cannot be read ({error.strerror}); rebuild the entry") from None
    try:
        return parse_manifest(raw, directory.name)
    except ContractError as error:
        raise EntryError(f"{path}: {error}") from None


def verify_sha256(path: Path, expected: str, role: str = "ONNX") -> None:
    """EntryError when the file is missing or its digest is not the declared one (truncated/replaced)."""
    if not path.exists() and not path.is_symlink():
        raise EntryError(f"{path.name} is missing; rebuild the entry with bnfold fold-and-export")
    try:
        with open_regular(path, role) as stream:
            actual = sha256_stream(stream)
    except ContractError as error:
        raise EntryError(str(error)) from None
    if actual != expected.lower():
        raise EntryError(
            f"sha256 of {path.name} is {actual[:16]}..., model.json says {expected[:16]}...: "
            "the file was truncated or replaced; rebuild the entry"
        )


def load_calibration(entry: Entry, limits: CalibrationLimits | None = None) -> dict[str, np.ndarray]:
    """The calibration batch, one array per declared input, checked against the declared datatype/shape and
    the size limits."""
    try:
        return read_calibration(entry.calibration_path(), entry.manifest.inputs, limits)
    except ContractError as error:
        raise EntryError(str(error)) from None
