"""Read a `--weights FILE` into a model: torch.load(weights_only=True) (tensors, never arbitrary objects), strict.

Accepted layouts: a state_dict; a checkpoint dict holding it under "state_dict" or "model"; keys all prefixed
"module." (saved from DataParallel/DistributedDataParallel) have the prefix stripped. A file that does not fit
is named with how many keys are missing and unexpected and the first few of each; every message is plain text
(terminal escape codes that torch's own messages may carry are removed).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnfold.contract.hashing import sha256_file
from bnfold.messages import shorten
from bnfold.models.errors import BadInputError

CHECKPOINT_KEYS = ("state_dict", "model")
PARALLEL_PREFIX = "module."
KEYS_SHOWN = 3
PICKLE_PROTOCOL_MARKER = b"\x80"
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def plain(text: str) -> str:
    """`text` without terminal escape codes (colours, cursor moves)."""
    return _ESCAPES.sub("", text)


def load_weights(model: nn.Module, path: Path) -> str:
    """Load `path` into `model` strictly; returns the file's SHA-256. Every failure is a BadInputError."""
    state = _state_dict(_read(path), path)
    _check_keys(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = shorten(plain(str(error)), 240)
        raise BadInputError(
            f"weights {path.name} do not match the architecture ({detail}); pass weights saved from this model"
        ) from None
    return sha256_file(path)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise BadInputError(f"weights file {path} not found; check --weights")
    if not _looks_like_a_checkpoint(path):
        raise BadInputError(
            f"weights {path} is not a PyTorch checkpoint (torch.load cannot read it); "
            "save the weights with torch.save(model.state_dict(), PATH)"
        )
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        lines = plain(str(error)).strip().splitlines()
        detail = f"{type(error).__name__}: {shorten(lines[0], 160)}" if lines else type(error).__name__
        raise BadInputError(
            f"cannot read weights {path} safely ({detail}); save them with torch.save(model.state_dict(), PATH)"
        ) from None


def _looks_like_a_checkpoint(path: Path) -> bool:
    """torch.save writes a zip archive (since 1.6) or, in the legacy format, a pickle (first byte 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as file:
        return file.read(1) == PICKLE_PROTOCOL_MARKER


def _state_dict(loaded: Any, path: Path) -> dict[str, Any]:
    """The state_dict in `loaded`: itself, or under "state_dict"/"model"; the DataParallel prefix stripped."""
    if isinstance(loaded, Mapping):
        for key in CHECKPOINT_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(key, str) for key in loaded):
        raise BadInputError(f"weights {path} hold a {type(loaded).__name__}, not a state_dict; save model.state_dict()")
    state = dict(loaded)
    if state and all(key.startswith(PARALLEL_PREFIX) for key in state):
        state = {key[len(PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return state


def _check_keys(model: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """Missing and unexpected keys counted and the first few of each named, before torch's own check."""
    expected = list(model.state_dict())
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in set(expected)]
    if not missing and not unexpected:
        return
    parts = [_listed(missing, "missing"), _listed(unexpected, "unexpected")]
    raise BadInputError(
        f"weights {path.name} do not match the architecture: "
        + "; ".join(part for part in parts if part)
        + "; pass weights saved from this model (torch.save(model.state_dict(), PATH))"
    )


def _listed(keys: list[str], what: str) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:KEYS_SHOWN]) + (", …" if len(keys) > KEYS_SHOWN else "")
    return f"{len(keys)} {what} key{'s' if len(keys) != 1 else ''} ({shown})"
