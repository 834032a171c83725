"""The SPEC of `bnfold fold-and-export --model SPEC` (and `bnfold recalibrate --model`), parsed once into a Spec.

SPEC forms, tried in this order:
    model.onnx               an ONNX graph (models/export/onnx_candidate.py; no PyTorch model)
    zoo:NAME                 a zoo net, trained (or taken from the weights cache)
    model.pt2                a torch.export archive (torch.export.save)
    path/to/net.py:build     a Python file and a factory function called with no arguments
                             (a target ending in .py or holding a '/' is a file)
    package.module:build     an importable module and a factory function

Torch-free: the value says which loader to use, and the default entry name, before anything is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bnfold.models.errors import UsageError

SpecKind = Literal["onnx", "zoo", "pt2", "file", "module"]


@dataclass(frozen=True)
class Spec:
    """A parsed SPEC: its kind, the text it came from, and what it names.

    `target` is the .onnx/.pt2 path, the zoo name, the factory's file path or module name; `function` is the
    factory's name (empty for the other kinds)."""

    text: str
    kind: SpecKind
    target: str
    function: str = ""

    @property
    def is_torch(self) -> bool:
        """Whether the SPEC names a PyTorch model (everything but an ONNX graph)."""
        return self.kind != "onnx"

    @property
    def default_name(self) -> str:
        """The entry name when --name is not given: 'path/net.py:build' → 'net', 'pkg.mod:build' → 'mod',
        'dir/model.pt2' → 'model', 'zoo:NAME' → 'NAME', 'dir/model.onnx' → 'model'."""
        if self.kind == "zoo":
            return self.target
        if self.kind == "onnx":
            return Path(self.target).stem
        name = self.target.rpartition(".")[2] if self.kind == "module" else Path(self.target).stem
        return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("_.-") or "model"


def parse_spec(text: str) -> Spec:
    """The Spec that `text` names; a UsageError naming the accepted forms when it names none."""
    if text.endswith(".onnx"):
        return Spec(text, "onnx", text)
    if text.startswith("zoo:"):
        return Spec(text, "zoo", text.removeprefix("zoo:"))
    if text.endswith(".pt2"):
        return Spec(text, "pt2", text)
    if ":" not in text:
        raise UsageError(
            f"--model {text!r} is not a SPEC; use zoo:NAME, path/to/net.py:build, package.module:build, a .pt2 "
            "or a .onnx file"
        )
    target, _, function = text.rpartition(":")
    if not target or not function:
        raise UsageError(f"--model {text!r} names no factory; write path/to/net.py:build or package.module:build")
    is_file = target.endswith(".py") or "/" in target
    return Spec(text, "file" if is_file else "module", target, function)
