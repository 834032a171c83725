"""The user's own calibration samples and tensor names for fold-and-export (`--calibration`, `--input-names`,
`--output-names`).

`--calibration FILE` is a `.npy` array, or a `.npz` with one array (the model's one input), read with
`allow_pickle=False` (numbers only, never objects). Its leading axis is the sample axis; the first
CALIBRATION_CAP samples become the entry's calibration batch (cut with a note on stderr), as float32.
Tensor names are what the exported graphs and the served metadata call the inputs and outputs: each is
1–64 letters, digits, '_', '.', '-', starting with a letter or '_', and names are unique.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bnfold.models.errors import BadInputError, UsageError
from bnfold.models.export.choices import CALIBRATION_CAP, UserChoices
from bnfold.models.export.spec import LoadedModel, parse_shape


def load_calibration(path: Path, shape: tuple[int, ...] | None) -> Tensor:
    """The calibration batch in `path` (first CALIBRATION_CAP samples) as float32, checked against `shape`."""
    array = _read_array(path)
    if array.ndim == 0 or len(array) == 0:
        raise BadInputError(f"--calibration {path} holds no samples; save an array of shape (samples, …)")
    if not np.issubdtype(array.dtype, np.floating):
        raise BadInputError(
            f"--calibration {path} has dtype {array.dtype}; the model's input is float32: save float samples"
        )
    if shape is not None and tuple(array.shape[1:]) != tuple(shape[1:]):
        raise BadInputError(
            f"--calibration {path} holds samples of shape {tuple(array.shape[1:])}, but --input-shape gives "
            f"{tuple(shape[1:])}; save samples of the model's input shape (samples first)"
        )
    if len(array) > CALIBRATION_CAP:
        print(f"note: --calibration {path} holds {len(array)} samples; using the first {CALIBRATION_CAP}",
              file=sys.stderr)  # fmt: skip
        array = array[:CALIBRATION_CAP]
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _read_array(path: Path) -> np.ndarray:
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
        return np.asarray(loaded)
    with loaded:
        if len(loaded.files) != 1:
            raise BadInputError(
                f"--calibration {path} holds {len(loaded.files)} arrays ({', '.join(loaded.files)}); "
                "the model takes one input: save one array"
            )
        try:
            return np.asarray(loaded[loaded.files[0]])
        except (ValueError, zipfile.BadZipFile) as error:
            raise BadInputError(f"--calibration {path} cannot be read without pickles ({error})") from None


def apply_names(loaded: LoadedModel, input_names: list[str] | None, output_names: list[str] | None) -> None:
    """Rename `loaded`'s input and outputs; the counts must match the model's."""
    if input_names is not None:
        if len(input_names) != 1:
            raise UsageError(f"--input-names gives {len(input_names)} names; the model takes 1 input: give 1")
        loaded.input_name = input_names[0]
    if output_names is not None:
        if len(output_names) != len(loaded.output_names):
            raise UsageError(
                f"--output-names gives {len(output_names)} name(s); the model returns {len(loaded.output_names)} "
                f"output(s) ({', '.join(loaded.output_names)})"
            )
        loaded.output_names = list(output_names)
    if loaded.input_name in loaded.output_names:
        raise UsageError(f"the input and an output are both called {loaded.input_name!r}; give them different names")


def user_batch(choices: UserChoices, input_shape: str | None) -> Tensor | None:
    """The --calibration batch (None without one), checked against --input-shape when that is given too."""
    if choices.calibration is None:
        return None
    return load_calibration(choices.calibration, parse_shape(input_shape) if input_shape is not None else None)
