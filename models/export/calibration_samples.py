"""The user's calibration samples (`--calibration FILE`), read and matched to a model's inputs; numpy only.

FILE is a `.npy` array (a model with one input) or a `.npz` with one array per input, keyed by the input's
name (a model with one input also takes a `.npz` holding one array under any key). It is read with
`allow_pickle=False`: numbers only, never objects. The leading axis of every array is the sample axis, every
array holds the same number of samples, and the first CALIBRATION_CAP samples are kept (a note on stderr
says when some are cut). Each array is checked against its input:

- dtype, when the input declares one (an ONNX graph input): float samples for a float input, cast to its
  dtype (float64 → float32 rounds to nearest, as a float32 client would); integer samples for an integer
  input, cast when every value fits its range; bool samples for a bool input. A PyTorch forward parameter
  declares nothing: float samples become float32, integer and bool samples are kept as they are.
- shape, when the input declares one: the same rank, and every static dimension equal (a symbolic
  dimension takes any size).
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bnfold.models.errors import BadInputError
from bnfold.models.export.choices import CALIBRATION_CAP

Dims = tuple[int | str, ...]  # per-sample dimensions: a static size, or a symbolic dimension's name ("?": unnamed)
_KIND_WORDS = {"f": "float", "i": "integer", "b": "bool"}


@dataclass(frozen=True)
class Samples:
    """The arrays of a calibration file, in the file's order (a `.npy`'s one array under the key "")."""

    path: Path
    arrays: dict[str, NDArray[Any]]
    npy: bool


@dataclass(frozen=True)
class InputSlot:
    """One input of the model as the samples must fit it; None where the model declares nothing."""

    name: str
    dtype: np.dtype[Any] | None = None
    dims: Dims | None = None  # per-sample dims (axis 0, the sample axis, left out)
    subject: str = ""  # how messages call the input (default: input 'NAME')
    dims_source: str = ""  # how messages introduce its dims (default: input 'NAME' takes)

    def called(self) -> str:
        return self.subject or f"input {self.name!r}"


def read_samples(path: Path) -> Samples:
    """Every array in `path`, without pickles; BadInputError for a missing or unreadable file."""
    if not path.is_file():
        raise BadInputError(f"calibration file {path} not found; check --calibration")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as error:
        raise BadInputError(
            f"--calibration {path} is not a .npy or .npz file of numbers ({type(error).__name__}); "
            "save it with numpy.save or numpy.savez"
        ) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return Samples(path, {"": np.asarray(loaded)}, npy=True)
    with loaded:
        try:
            arrays = {key: np.asarray(loaded[key]) for key in loaded.files}
        except (ValueError, zipfile.BadZipFile) as error:
            raise BadInputError(f"--calibration {path} cannot be read without pickles ({error})") from None
    return Samples(path, arrays, npy=False)


def match_samples(samples: Samples, slots: Sequence[InputSlot]) -> dict[str, NDArray[Any]]:
    """One checked array per slot (slot name → array, in the slots' order), cut to CALIBRATION_CAP samples."""
    keyed = _keyed(samples, slots)
    arrays = {
        slot.name: _checked(array, slot, _label(samples, key, len(slots)))
        for slot, (key, array) in zip(slots, keyed, strict=True)
    }
    counts = {name: len(array) for name, array in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} {count}" for name, count in counts.items())
        raise BadInputError(
            f"--calibration {samples.path} holds different numbers of samples per input ({listed}); give every "
            "input the same number of samples (the leading axis)"
        )
    count = next(iter(counts.values()))
    if count > CALIBRATION_CAP:
        print(f"note: --calibration {samples.path} holds {count} samples; using the first {CALIBRATION_CAP}",
              file=sys.stderr)  # fmt: skip
    return {name: np.ascontiguousarray(array[:CALIBRATION_CAP]) for name, array in arrays.items()}


def _keyed(samples: Samples, slots: Sequence[InputSlot]) -> list[tuple[str, NDArray[Any]]]:
    """(key, array) per slot: the one array for a single input, else the array keyed by each input's name."""
    path, arrays = samples.path, samples.arrays
    if len(slots) == 1:
        if len(arrays) != 1:
            raise BadInputError(
                f"--calibration {path} holds {len(arrays)} arrays ({', '.join(arrays)}); "
                "the model takes one input: save one array"
            )
        return list(arrays.items())
    names = [slot.name for slot in slots]
    if samples.npy:
        raise BadInputError(
            f"--calibration {path} is a single array, but the model takes {len(slots)} inputs ({', '.join(names)}): "
            "save a .npz with one array per input, keyed by the input names"
        )
    missing = [name for name in names if name not in arrays]
    if missing:
        raise BadInputError(
            f"--calibration {path} has no array for input(s) {', '.join(missing)} (it holds "
            f"{', '.join(arrays) or 'none'}); save one array per input, keyed by the input names {', '.join(names)}"
        )
    extra = [key for key in arrays if key not in names]
    if extra:
        raise BadInputError(
            f"--calibration {path} holds array(s) {', '.join(extra)} for no input of the model; save one array "
            f"per input, keyed by the input names {', '.join(names)}"
        )
    return [(name, arrays[name]) for name in names]


def _label(samples: Samples, key: str, inputs: int) -> str:
    return f"--calibration {samples.path}" if inputs == 1 else f"--calibration {samples.path} array {key!r}"


def _checked(array: NDArray[Any], slot: InputSlot, label: str) -> NDArray[Any]:
    if array.ndim == 0 or len(array) == 0:
        raise BadInputError(f"{label} holds no samples; save an array of shape (samples, …)")
    converted = _converted(array, slot, label)
    if slot.dims is not None and not _fits(tuple(array.shape[1:]), slot.dims):
        source = slot.dims_source or f"{slot.called()} takes"
        raise BadInputError(
            f"{label} holds samples of shape {shape_text(array.shape[1:])}, but {source} {shape_text(slot.dims)}; "
            "save samples of the model's input shape (samples first)"
        )
    return converted


def _converted(array: NDArray[Any], slot: InputSlot, label: str) -> NDArray[Any]:
    """`array` in the dtype the input takes (see the module docstring); BadInputError when it cannot be."""
    got = _kind(array.dtype)
    if slot.dtype is None:
        if got == "f":
            return array.astype(np.float32, copy=False)
        if got in ("i", "b"):
            return array
        raise BadInputError(f"{label} has dtype {array.dtype}; save float, integer or bool samples")
    want = np.dtype(slot.dtype)
    if got != _kind(want):
        word = _KIND_WORDS.get(_kind(want), str(want))
        raise BadInputError(f"{label} has dtype {array.dtype}; {slot.called()} is {want}: save {word} samples")
    if got == "i" and array.size and not _fits_range(array, want):
        raise BadInputError(
            f"{label} holds integers outside the range of {want}; {slot.called()} is {want}: save values that fit"
        )
    return array.astype(want, copy=False)


def _kind(dtype: np.dtype[Any]) -> str:
    """'f' float, 'i' integer (signed or not), 'b' bool, else numpy's kind letter."""
    return "i" if dtype.kind in "iu" else dtype.kind


def _fits_range(array: NDArray[Any], dtype: np.dtype[Any]) -> bool:
    limits = np.iinfo(dtype)
    return limits.min <= int(array.min()) and int(array.max()) <= limits.max


def _fits(actual: tuple[int, ...], declared: Dims) -> bool:
    """Same rank, and every static declared dimension equal."""
    if len(actual) != len(declared):
        return False
    return all(not isinstance(want, int) or want == got for got, want in zip(actual, declared, strict=True))


def shape_text(dims: Sequence[int | str]) -> str:
    """(3, 8, 8), (seq, 8), (5,): a tuple's repr, with symbolic dimensions by name."""
    parts = [str(dim) for dim in dims]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
