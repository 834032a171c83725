"""What the user of fold-and-export chose about calibration samples and tensor names, and the tensor-name rule;
torch-free.

models/export/calibration_samples.py reads and checks the samples, models/export/user_inputs.py (PyTorch) and
models/export/onnx_candidate.py / onnx_names.py (ONNX) apply them; this module only carries them, so that
fold_and_export.py can be imported without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bnfold.models.errors import UsageError

CALIBRATION_CAP = 64  # samples of --calibration kept as the calibration batch
TENSOR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")  # input/output names in the graphs and the metadata


@dataclass(frozen=True)
class UserChoices:
    """What the user said about calibration samples and tensor names (None: bnfold's defaults)."""

    calibration: Path | None = None
    input_names: list[str] | None = None
    output_names: list[str] | None = None


def parse_names(text: str | None, flag: str) -> list[str] | None:
    """'a,b' → ['a', 'b'], each a valid tensor name and all unique (a UsageError otherwise)."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",")]
    for name in names:
        check_tensor_name(name)
    if len(set(names)) != len(names):
        raise UsageError(f"{flag} {text!r} repeats a name; give each tensor its own name")
    return names


def check_tensor_name(name: str) -> None:
    if TENSOR_NAME.fullmatch(name) is None:
        raise UsageError(
            f"{name!r} is not a valid tensor name; use 1–64 letters, digits, '_', '.', '-', "
            "starting with a letter or '_'"
        )
