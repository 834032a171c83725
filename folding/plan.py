"""The vocabulary both engines plan in: one BatchNorm's decision, where its error is measured, and the
wording of every refusal that is common to the PyTorch and the ONNX engine.

Both engines try, for each inference BatchNorm, the previous layer, then the next layer, then lowering to
a per-channel y = s·x + t; a BN that none of these takes is kept. The reason of an entry that was not
folded lists what each step said, in that order, with the same words in both engines.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnfold.folding.report import Action, FoldEntry

LOWERING_DISABLED = "lowering is disabled"
ALREADY_MUL_ADD = "it already is a per-channel Mul/Add"


def output_needed_elsewhere(layer: str, readers: str) -> str:
    """Why a BN cannot go into the layer producing its input: something else reads that output (a residual
    add, a concat, a graph output), and would see the BN applied too."""
    return f"the output of {layer} is needed elsewhere: {readers}; folding would change what the other readers see"


def pads_with_zeros(layer: str, padding: str) -> str:
    """Why a BN cannot go into the conv reading its output: the conv's zero-padded border would receive the
    BN's shift t instead of zero."""
    return f"{layer} pads with zeros ({padding}), so its border would receive the BN's shift instead of zero"


def not_folded(previous: str, following: str) -> str:
    """Why a BN went into neither neighbour: each side's refusal."""
    return f"not into the previous layer: {previous}; not into the next layer: {following}"


def not_lowered(refusal: str, why: str) -> str:
    """Why a BN that went into neither neighbour was kept rather than lowered."""
    return f"{refusal}; not lowered: {why}"


@dataclass(frozen=True)
class Rewrite:
    """A successful fold or lowering: `target` is the layer the BN went into (or the node it became),
    `probe` the node or value whose data the rewrite changed, where its error is measured."""

    target: str
    probe: str


@dataclass(frozen=True)
class Decision:
    """What happened to one BatchNorm: the action, the layer it was folded into, and why it was not
    folded (None when folded)."""

    action: Action
    target: str | None = None
    reason: str | None = None

    @classmethod
    def folded(cls, action: Action, target: str) -> Decision:
        return cls(action, target=target)

    @classmethod
    def lowered(cls, reason: str) -> Decision:
        return cls(Action.LOWERED, reason=reason)

    @classmethod
    def kept(cls, reason: str) -> Decision:
        return cls(Action.KEPT, reason=reason)

    def entry(
        self, bn: str, max_error: float | None = None, *, kind: str = "batchnorm", sources: tuple[str, ...] = ()
    ) -> FoldEntry:
        """The report entry of this decision for the BN (of `kind`, from the nodes `sources`) named `bn`."""
        return FoldEntry(
            bn=bn,
            action=self.action,
            target=self.target,
            reason=self.reason,
            max_error=max_error,
            kind=kind,
            sources=sources,
        )


@dataclass
class Plan:
    """One BatchNorm's decision plus where to measure it: `reference` names what computes the BN's output
    (or what the fold turns it into) in the unfolded model, `replacement` what computes the same in the
    folded model; both None when the engine does not measure this entry."""

    decision: Decision
    reference: str | None = None
    replacement: str | None = None
