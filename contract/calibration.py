"""Reading calibration.npz: one array per declared input, with the declared datatype and shape, no pickles.

An array matches a declared shape when the ranks agree and every declared dimension is -1 (the dynamic batch
axis) or equal to the array's. The file must be a regular file (bnfold.contract.entry_files) and its arrays
within the size limits, read from their headers before anything is decompressed (bnfold.contract.npz_limits).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bnfold.contract.datatypes import V2_TO_NUMPY
from bnfold.contract.entry_files import open_regular
from bnfold.contract.errors import ContractError
from bnfold.contract.manifest import TensorSpec
from bnfold.contract.npz_limits import CalibrationLimits, check_npz_limits


def read_calibration(
    path: Path, inputs: Sequence[TensorSpec], limits: CalibrationLimits | None = None
) -> dict[str, NDArray[Any]]:
    """The calibration batch at `path`, one array per declared input (in declaration order)."""
    with open_regular(path, "calibration") as stream:
        check_npz_limits(stream, path.name, limits or CalibrationLimits())
        return _read_arrays(stream, path.name, inputs)


def _read_arrays(stream: Any, name: str, inputs: Sequence[TensorSpec]) -> dict[str, NDArray[Any]]:
    try:
        with np.load(stream, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise ContractError(f"calibration file {name} cannot be read ({error}); rebuild the entry") from None
    for spec in inputs:
        check_calibration_array(arrays, spec)
    return {spec.name: arrays[spec.name] for spec in inputs}


def check_calibration_array(arrays: dict[str, NDArray[Any]], spec: TensorSpec) -> None:
    """ContractError unless `arrays` holds the input `spec` with its datatype and shape."""
    if spec.name not in arrays:
        raise ContractError(f"calibration has no array for input {spec.name!r} (it has {sorted(arrays)})")
    array = arrays[spec.name]
    if array.dtype != V2_TO_NUMPY[spec.datatype]:
        raise ContractError(f"calibration input {spec.name!r} is {array.dtype}, model.json says {spec.datatype}")
    if not shape_matches(array.shape, spec.shape):
        raise ContractError(
            f"calibration input {spec.name!r} has shape {list(array.shape)}, expected {list(spec.shape)}"
        )


def shape_matches(actual: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    """True when ranks agree and every declared dimension is -1 or equal."""
    if len(actual) != len(declared):
        return False
    return all(want in (-1, got) for got, want in zip(actual, declared, strict=True))
