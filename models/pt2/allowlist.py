"""Refuse a torch.export archive (.pt2) unless every part of it loads without unpickling arbitrary objects.

torch.export.load unpickles with `weights_only=False` in several places: a weight or constant whose
config says "use_pickle": true, a constant named custom_obj_* (torchbind) or opaque_obj_* (pickle.loads),
the sample inputs when a `weights_only=True` load of them fails, the legacy `data/weights/model.pt` /
`data/constants/model.pt` files and the legacy (pre-2.7) archive format; an AOTInductor payload loads a
shared library. A crafted archive could run code through any of these before torch reports an error, so
the archive is checked *before* torch.export.load, against an allow-list of what a plain
`torch.export.save(torch.export.export(module, …))` writes:

- every entry sits under one top-level directory, with no two names equal ignoring case (the archive
  reader looks names up case-insensitively);
- after that directory, each name is one of: archive_format, archive_version, byteorder, .data/version,
  .data/serialization_id, models/model.json, data/sample_inputs/model.pt, the two payload configs,
  data/weights/weight_N, data/constants/tensor_N, extra/… (read as text);
- every payload config entry has "use_pickle": false and a path_name weight_N (weights) or tensor_N
  (constants) that is in the archive;
- the sample inputs load with `torch.load(weights_only=True)` (torch tries exactly that first, so its
  `weights_only=False` fallback is never reached);
- models/model.json passes models/pt2_program.py: its shape expressions (which torch hands to
  sympy.sympify, an eval) and its node targets (resolved by attribute walks from `torch`) are allow-listed.

Only torch's restricted weights-only unpickler and json ever see bytes of the archive here.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from bnfold.models.errors import BadInputError
from bnfold.models.pt2.program import program_refusal, safe_name

_FIXED_NAMES = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        "models/model.json",
        "data/sample_inputs/model.pt",
        "data/weights/model_weights_config.json",
        "data/constants/model_constants_config.json",
    }
)
_ALLOWED = re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+|extra/[A-Za-z0-9_.\-/]+")
_PAYLOADS = {"data/weights/": re.compile(r"weight_\d+"), "data/constants/": re.compile(r"tensor_\d+")}
_FIX = (
    "re-export a plain nn.Module with torch.export.save (no tensor subclasses, custom objects or AOTInductor), "
    "or export it to ONNX"
)


def checked_archive_bytes(path: Path) -> bytes:
    """The archive's bytes, read once, after checking them; raise BadInputError naming the first part that
    could unpickle arbitrary objects. Load exactly these bytes (io.BytesIO), not the path again, so the file
    cannot change between the check and the load."""
    try:
        data = path.read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = _relative_names(archive, path)
            for name in entries:
                if name not in _FIXED_NAMES and not _ALLOWED.fullmatch(name):
                    raise BadInputError(
                        f"{path} contains {name!r}, which a plain torch.export archive does not have; {_FIX}"
                    )
            for directory, config in (
                ("data/weights/", "model_weights_config.json"),
                ("data/constants/", "model_constants_config.json"),
            ):
                _check_payload_config(path, archive, entries, directory, config)
            _check_sample_inputs(path, archive.read(entries["data/sample_inputs/model.pt"]))
            refusal = program_refusal(archive.read(entries["models/model.json"]))
            if refusal is not None:
                raise BadInputError(f"{path}: {refusal}; {_FIX}")
        return data
    except (zipfile.BadZipFile, OSError, KeyError) as error:
        raise BadInputError(f"{path} is not a readable torch.export archive ({type(error).__name__}); {_FIX}") from None


def _relative_names(archive: zipfile.ZipFile, path: Path) -> dict[str, str]:
    """Archive names below the single top-level directory → full names; refuses anything ambiguous."""
    full_names = archive.namelist()
    if not full_names:
        raise BadInputError(f"{path} is an empty zip, not a torch.export archive; {_FIX}")
    root = full_names[0].split("/", 1)[0] + "/"
    if len({name.lower() for name in full_names}) != len(full_names):
        raise BadInputError(f"{path} has entries whose names differ only in case or repeat; {_FIX}")
    entries: dict[str, str] = {}
    for name in full_names:
        if not name.startswith(root) or name.endswith("/"):
            raise BadInputError(f"{path} has an entry {name!r} outside its top-level directory {root!r}; {_FIX}")
        entries[name[len(root) :]] = name
    for required in ("archive_format", "models/model.json", "data/sample_inputs/model.pt"):
        if required not in entries:
            raise BadInputError(f"{path} has no {required} (legacy or non-torch.export archive); {_FIX}")
    return entries


def _check_payload_config(
    path: Path, archive: zipfile.ZipFile, entries: dict[str, str], directory: str, config_name: str
) -> None:
    """Every entry of a weights/constants config is a raw tensor file (use_pickle false) that exists."""
    name = directory + config_name
    if name not in entries:
        raise BadInputError(f"{path} has no {name} (legacy archive format); {_FIX}")
    try:
        config: Any = json.loads(archive.read(entries[name]))["config"]
        items = [(str(fqn), meta["use_pickle"], meta["path_name"]) for fqn, meta in config.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadInputError(f"{path}: {name} is not a valid payload config; {_FIX}") from None
    for fqn, use_pickle, path_name in items:
        if not safe_name(fqn):
            raise BadInputError(f"{path}: {name} names {fqn[:80]!r}, not a dotted path of letters and digits; {_FIX}")
        if use_pickle is not False:
            raise BadInputError(
                f"{path}: {fqn!r} is stored pickled (use_pickle), which could run code when loaded; {_FIX}"
            )
        if not isinstance(path_name, str) or not _PAYLOADS[directory].fullmatch(path_name):
            raise BadInputError(f"{path}: {fqn!r} is stored as {path_name!r}, not a plain tensor file; {_FIX}")
        if directory + path_name not in entries:
            raise BadInputError(f"{path}: {fqn!r} names {directory + path_name}, which is missing; {_FIX}")


def _check_sample_inputs(path: Path, payload: bytes) -> None:
    """The sample inputs must load with the restricted weights-only unpickler."""
    try:
        torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as error:
        raise BadInputError(
            f"{path}: its sample inputs need a full unpickler ({type(error).__name__}), which could run code; {_FIX}"
        ) from None
