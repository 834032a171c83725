"""The fold report: one entry per BatchNorm, saying what happened to it and why.

The same shape is produced by `folding.fold` (PyTorch) and `folding.fold_onnx` (ONNX) and is stored in a
repository's model.json under "fold_report" (see docs/repository-format.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    """What happened to one BatchNorm."""

    FOLDED_INTO_PREVIOUS = "folded_into_previous"
    FOLDED_INTO_NEXT = "folded_into_next"
    LOWERED = "lowered_to_scale_shift"
    KEPT = "kept"

    @property
    def removes_batchnorm(self) -> bool:
        """True when no BatchNorm op remains for this entry in the folded model."""
        return self is not Action.KEPT


@dataclass(frozen=True)
class FoldEntry:
    """One BatchNorm's fate.

    bn: the BN's name in the source model (module path, call-site name, or ONNX node name).
    target: the layer it went into (None when kept or lowered).
    reason: why it was not folded (None when folded).
    max_error: max |BN output − replacement output| measured on the example inputs (None if not measured).
    kind: what the BN is: "batchnorm" (a BatchNormalization node or nn.BatchNorm module),
        "frozen_batchnorm", or "affine" (a per-channel y = s·x + t written as Mul/Add by constants).
    sources: the names of the nodes or modules it came from.
    """

    bn: str
    action: Action
    target: str | None = None
    reason: str | None = None
    max_error: float | None = None
    kind: str = "batchnorm"
    sources: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["action"] = self.action.value
        data["sources"] = list(self.sources)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FoldEntry:
        """The entry written by `to_json`; KeyError for a missing field, ValueError for an unknown action."""
        action, known = data["action"], [value.value for value in Action]
        if action not in known:
            raise ValueError(f"unknown action {action!r} for {data['bn']!r}; expected one of {known}")
        return cls(
            bn=str(data["bn"]),
            action=Action(action),
            target=data.get("target"),
            reason=data.get("reason"),
            max_error=data.get("max_error"),
            kind=str(data.get("kind", "batchnorm")),
            sources=tuple(str(source) for source in data.get("sources", ())),
        )


@dataclass
class FoldReport:
    """All entries of one fold, in graph order, plus the end-to-end error on the example inputs."""

    entries: list[FoldEntry] = field(default_factory=list)
    max_output_error: float | None = None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, bn: str) -> FoldEntry:
        """The entry of the BN named `bn`; KeyError lists the names there are."""
        for entry in self.entries:
            if entry.bn == bn:
                return entry
        raise KeyError(f"no BatchNorm named {bn!r} in the report; there are {[e.bn for e in self.entries]}")

    @property
    def total(self) -> int:
        return len(self.entries)

    @property
    def removed(self) -> int:
        """How many BatchNorms no longer exist as BN ops (folded either way, or lowered)."""
        return sum(entry.action.removes_batchnorm for entry in self.entries)

    @property
    def folded(self) -> int:
        """How many BatchNorms were merged into a neighbouring layer's weights."""
        return sum(entry.action in (Action.FOLDED_INTO_PREVIOUS, Action.FOLDED_INTO_NEXT) for entry in self.entries)

    def count(self, action: Action) -> int:
        """How many entries have `action`."""
        return sum(entry.action is action for entry in self.entries)

    def counts(self) -> dict[str, int]:
        counter = Counter(entry.action.value for entry in self.entries)
        return {action.value: counter.get(action.value, 0) for action in Action}

    def summary(self) -> str:
        """One line, e.g. '12/14 BatchNorm folded, 1 lowered, 1 kept'."""
        counts = self.counts()
        return (
            f"{self.folded}/{self.total} BatchNorm folded, {counts[Action.LOWERED.value]} lowered, "
            f"{counts[Action.KEPT.value]} kept"
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in model.json (docs/repository-format.md); do not change its shape."""
        return {
            "entries": [entry.to_json() for entry in self.entries],
            "max_output_error": self.max_output_error,
            "summary": self.summary(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FoldReport:
        """The report written by `to_json` (model.json's "fold_report"); "summary" is derived, not read."""
        return cls(
            entries=[FoldEntry.from_json(e) for e in data["entries"]],
            max_output_error=data.get("max_output_error"),
        )
