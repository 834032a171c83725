"""Write and read entries of a model repository (docs/repository-format.md); no torch needed.

A writer builds the whole entry in a hidden sibling directory `.NAME.tmp-XXXX` (ignored by readers) and
renames it to `NAME` at the end, so a reader sees either a complete entry or none. Every file and the
temporary directory are fsynced before the rename and the repository directory after it, so after a crash
or power loss an entry that is visible is also complete. On any failure the temporary directory is
removed: nothing is left behind.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bnfold.contract.calibration import read_calibration as read_contract_calibration
from bnfold.contract.errors import ContractError
from bnfold.contract.hashing import sha256_bytes, sha256_file
from bnfold.contract.layout import (
    CALIBRATION_FILE,
    FOLDED_FILE,
    FORMAT,
    MANIFEST_FILE,
    NAME_RULE,
    UNFOLDED_FILE,
    is_valid_name,
)
from bnfold.contract.manifest import TensorSpec, parse_manifest
from bnfold.models.errors import BadInputError, VerificationError
from bnfold.models.export.temporaries import claim_temporary, release_temporary, remove_stale

__all__ = [
    "CALIBRATION_FILE",
    "FOLDED_FILE",
    "FORMAT",
    "MANIFEST_FILE",
    "UNFOLDED_FILE",
    "check_name",
    "check_repository",
    "entry_path",
    "read_calibration",
    "read_manifest",
    "sha256_bytes",
    "sha256_file",
    "staged_entry",
    "write_entry",
]


def check_name(name: str) -> None:
    """Refuse names the format does not allow."""
    if not is_valid_name(name):
        raise BadInputError(f"model name {name!r} is not allowed; use {NAME_RULE} (--name)")


def entry_path(repository: Path, name: str) -> Path:
    """REPO_DIR/NAME, refusing a name the format forbids or an entry that already exists."""
    check_name(name)
    target = repository / name
    if target.exists():
        raise BadInputError(f"output directory {target} already exists; remove it or choose another --name / --out")
    if repository.exists() and not repository.is_dir():
        raise BadInputError(f"--out {repository} is a file, not a directory; give a directory path")
    return target


def check_repository(repository: Path) -> None:
    """Refuse, before any slow step, an --out that is a file or lies below one, or cannot be written."""
    existing = repository
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BadInputError(f"--out {repository}: {existing} is a file, not a directory; give a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write into {existing} (permission denied); choose a writable --out")


class StagedEntry:
    """The hidden temporary directory an entry is built in (`path`), and the entry it becomes (`target`)."""

    def __init__(self, path: Path, target: Path) -> None:
        self.path, self.target = path, target

    def write(self, file_name: str, data: bytes) -> None:
        """Write one file of the entry, fsynced."""
        _write_synced(self.path / file_name, data)

    def finish(self, manifest: Mapping[str, Any], calibration: Mapping[str, NDArray[Any]]) -> None:
        """Write calibration.npz and model.json, the last files of an entry."""
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **{key: np.asarray(value) for key, value in calibration.items()})
        self.write(CALIBRATION_FILE, buffer.getvalue())
        self.write(MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())


@contextmanager
def staged_entry(repository: Path, name: str) -> Iterator[StagedEntry]:
    """Build REPO_DIR/NAME in `.NAME.tmp-XXXX`: every file written into it is fsynced (files written by other
    writers too), then it is renamed into place when the block ends; on any failure it is removed."""
    target = entry_path(repository, name)
    created = not repository.exists()
    try:
        repository.mkdir(parents=True, exist_ok=True)
        remove_stale(repository)  # temporaries of writers that died (kill -9, power loss)
        temporary = claim_temporary(repository, name)
    except OSError as error:
        raise BadInputError(f"cannot write into {repository} ({error.strerror}); choose a writable --out") from None
    try:
        yield StagedEntry(temporary, target)
        for path in temporary.iterdir():
            path.chmod(0o644)  # readable by a service running as another user (onnx writes data files 0600)
            _fsync_file(path)
        temporary.chmod(0o755)
        _fsync_directory(temporary)  # the entries' names are durable before the entry becomes visible
        temporary.rename(target)
        release_temporary(temporary)
        _fsync_directory(repository)  # the rename itself is durable
        if created:
            _fsync_directory(repository.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        release_temporary(temporary)
        raise


def write_entry(
    repository: Path,
    name: str,
    manifest: Mapping[str, Any],
    onnx_files: Mapping[str, bytes],
    calibration: Mapping[str, NDArray[Any]],
) -> Path:
    """Write REPO_DIR/NAME atomically: ONNX files, calibration.npz and model.json, then one rename."""
    with staged_entry(repository, name) as staged:
        for file_name, data in onnx_files.items():
            staged.write(file_name, data)
        staged.finish(manifest, calibration)
    return staged.target


def _write_synced(path: Path, data: bytes) -> None:
    """Write `data` to a new file and fsync it, so a crash after the rename cannot leave it empty or short."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    """fsync a directory, making the names created or renamed in it durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_manifest(entry: Path) -> dict[str, Any]:
    """model.json of an entry, validated by the contract's schema (bnfold.contract.manifest): refuses a missing
    file, bad JSON, another format, a mismatched name or a field of the wrong type. Returns the JSON document."""
    path = entry / MANIFEST_FILE
    if not path.is_file():
        raise BadInputError(f"{path} not found; give a repository entry REPO_DIR/NAME written by fold-and-export")
    raw = path.read_bytes()
    try:
        parse_manifest(raw, entry.name)
        manifest: dict[str, Any] = json.loads(raw)
    except ContractError as error:
        raise VerificationError(f"{path}: {error}") from None
    return manifest


def read_calibration(entry: Path, manifest: Mapping[str, Any]) -> dict[str, NDArray[Any]]:
    """The calibration arrays, one per declared input, with the declared dtypes and shapes (no pickles)."""
    inputs = [TensorSpec.model_validate(spec) for spec in manifest["inputs"]]
    try:
        return read_contract_calibration(entry / manifest["calibration"]["file"], inputs)
    except ContractError as error:
        raise VerificationError(f"{entry}: {error}") from None
