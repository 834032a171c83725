"""Bounding a calibration archive before it is decompressed.

A .npz is a zip of .npy members; each member starts with a small header giving the array's dtype and shape.
Reading only that header (numpy.lib.format.read_magic / read_array_header_*) decompresses a few hundred bytes,
so the decoded size of every array is known before any array is read:

    samples = shape[0] (1 for a 0-d array),   decoded bytes = itemsize · ∏ shape.

A 467 kB archive of zeros can declare gigabytes; `check_npz_limits` refuses an archive whose arrays declare
more than `max_samples` along axis 0 or more than `max_bytes` decoded in total. numpy then reads exactly the
declared number of bytes per array, so the bound also holds while loading.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from typing import IO, BinaryIO

import numpy as np

from bnfold.contract.errors import ContractError

DEFAULT_MAX_SAMPLES = 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CalibrationLimits:
    """The largest calibration batch a reader accepts: samples (axis 0) per array, decoded bytes in total."""

    max_samples: int = DEFAULT_MAX_SAMPLES
    max_bytes: int = DEFAULT_MAX_BYTES


def check_npz_limits(stream: BinaryIO, name: str, limits: CalibrationLimits) -> None:
    """ContractError when an array of the archive `stream` declares more than the limits allow."""
    total = 0
    try:
        with zipfile.ZipFile(stream) as archive:
            for member in archive.infolist():
                with archive.open(member) as npy:
                    shape, itemsize = _declared(npy)
                samples = shape[0] if shape else 1
                if samples > limits.max_samples:
                    raise ContractError(
                        f"calibration file {name}: array {member.filename!r} declares {samples} samples, over the "
                        f"limit of {limits.max_samples}; rebuild the entry with a smaller calibration batch or "
                        "raise BNFOLD_MAX_CALIBRATION_SAMPLES"
                    )
                total += itemsize * math.prod(shape)
    except ContractError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ContractError(f"calibration file {name} cannot be read ({error}); rebuild the entry") from None
    finally:
        stream.seek(0)
    if total > limits.max_bytes:
        raise ContractError(
            f"calibration file {name} declares {total} bytes of arrays, over the limit of {limits.max_bytes}; "
            "rebuild the entry with a smaller calibration batch or raise BNFOLD_MAX_CALIBRATION_BYTES"
        )


def _declared(npy: IO[bytes]) -> tuple[tuple[int, ...], int]:
    """(shape, itemsize) from a .npy header, reading nothing past it."""
    version = np.lib.format.read_magic(npy)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(npy)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(npy)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    return tuple(int(size) for size in shape), int(dtype.itemsize)
