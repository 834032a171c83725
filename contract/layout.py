"""The layout of a model repository: the format string, the entry-name rule, file and variant names.

    REPO_DIR/NAME/{model.json, unfolded.onnx, folded.onnx, calibration.npz}

NAME is 1–64 characters from [A-Za-z0-9_.-], starting with a letter or digit. The whole string must match
(`re.fullmatch`): a trailing newline is refused too (`re.match` with `$` would accept "nl\\n").
Directories whose name starts with '.' (a writer's temporary `.NAME.tmp-…`) are not entries.
"""

from __future__ import annotations

import re

from bnfold.contract.errors import ContractError

FORMAT = "bnfold-repository/1"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MANIFEST_FILE = "model.json"
UNFOLDED_FILE, FOLDED_FILE, CALIBRATION_FILE = "unfolded.onnx", "folded.onnx", "calibration.npz"
VARIANTS = ("folded", "unfolded")
VARIANT_FILES = {"unfolded": UNFOLDED_FILE, "folded": FOLDED_FILE}
NAME_RULE = "1–64 letters, digits, '_', '.', '-' starting with a letter or digit"


def is_valid_name(name: str) -> bool:
    """True when the whole of `name` matches NAME_PATTERN (no trailing newline, no path separator)."""
    return NAME_PATTERN.fullmatch(name) is not None


def check_name(name: str) -> None:
    """ContractError unless `name` is a valid entry name."""
    if not is_valid_name(name):
        raise ContractError(f"model name {name!r} is not allowed; use {NAME_RULE}")
