"""A served model: its two variants, its state (loading / ready / unavailable), degradation and agreement stats."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from bnfold.service.equivalence import Equivalence, finite_or_none
from bnfold.service.errors import NotFoundError, NotReadyError
from bnfold.service.repository import VARIANTS, Manifest
from bnfold.service.runtime import Runner, SessionConfig, Tensors
from bnfold.service.usage import VersionUsage

State = Literal["loading", "ready", "unavailable"]


@dataclass
class Variant:
    """One ONNX variant of a model and the options its session was opened with."""

    name: str
    runner: Runner
    config: SessionConfig
    batchnorm_nodes: int


@dataclass
class AgreementStats:
    """Running figures of the equivalence checks made while serving.

    `checks` counts every check; `inconclusive` ones (non-finite unfolded reference) are neither agreements
    nor mismatches, do not move the max-diff figures, and are left out of `agreement_rate`. Every mismatch
    is either `rounding_explained` (by the referee) or a `confirmed_defect`.
    """

    checks: int = 0
    mismatches: int = 0
    rounding_explained: int = 0
    confirmed_defects: int = 0
    inconclusive: int = 0
    argmax_disagreements: int = 0
    max_abs_diff_seen: float = 0.0
    max_rel_diff_seen: float = 0.0
    last_mismatch: str | None = None
    last_inconclusive: str | None = None
    reverifications: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, result: Equivalence, request_id: str) -> None:
        with self._lock:
            self.checks += 1
            if result.inconclusive:
                self.inconclusive += 1
                self.last_inconclusive = f"request {request_id}: {result.describe()}"
                return
            self.max_abs_diff_seen = max(self.max_abs_diff_seen, result.max_abs)
            self.max_rel_diff_seen = max(self.max_rel_diff_seen, result.max_rel)
            self.argmax_disagreements += result.argmax_agree is False
            if result.mismatch:
                self.mismatches += 1
                self.rounding_explained += result.rounding
                self.confirmed_defects += result.defect
                self.last_mismatch = f"request {request_id}: {result.describe()}"

    def to_json(self) -> dict[str, Any]:
        conclusive = self.checks - self.inconclusive
        return {
            "checks": self.checks,
            "mismatches": self.mismatches,
            "rounding_explained": self.rounding_explained,
            "confirmed_defects": self.confirmed_defects,
            "inconclusive": self.inconclusive,
            "agreement_rate": 1.0 - self.mismatches / conclusive if conclusive else None,
            "argmax_disagreements": self.argmax_disagreements,
            "max_abs_diff_seen": finite_or_none(self.max_abs_diff_seen),
            "max_rel_diff_seen": finite_or_none(self.max_rel_diff_seen),
            "last_mismatch": self.last_mismatch,
            "last_inconclusive": self.last_inconclusive,
            "reverifications": self.reverifications,
        }


@dataclass
class ServedModel:
    """What the data plane serves under one name."""

    name: str
    state: State = "loading"
    reason: str | None = None
    manifest: Manifest | None = None
    variants: dict[str, Variant] = field(default_factory=dict)
    calibration: Equivalence | None = None
    folded_degraded: str | None = None
    stats: AgreementStats = field(default_factory=AgreementStats)
    usage: dict[str, VersionUsage] = field(default_factory=lambda: {name: VersionUsage() for name in VARIANTS})
    calibration_batch: Tensors | None = None  # kept for re-verification
    offending: list[Tensors] = field(default_factory=list)  # samples of confirmed defects, for re-verification

    @property
    def default_version(self) -> str:
        """The version an unversioned request runs: folded, or unfolded while folded is degraded."""
        return "unfolded" if self.folded_degraded else "folded"

    def require_ready(self) -> Manifest:
        """The manifest of a ready model, else NotReadyError with the reason."""
        if self.state == "loading":
            raise NotReadyError(f"model {self.name!r} is still loading; retry when /v2/health/ready is 200")
        if self.state != "ready" or self.manifest is None:
            raise NotReadyError(f"model {self.name!r} is not ready: {self.reason}")
        return self.manifest

    def variant(self, version: str | None) -> Variant:
        """The variant a request runs: the named version, or the default (folded unless degraded)."""
        self.check_version(version)
        self.require_ready()
        if version is None:
            return self.variants["unfolded" if self.folded_degraded else "folded"]
        return self.variants[version]

    def check_version(self, version: str | None) -> None:
        """NotFoundError unless version is None, 'folded' or 'unfolded'."""
        if version is not None and version not in VARIANTS:
            raise NotFoundError(
                f"unknown version {version!r} of model {self.name!r}; versions are 'folded' and 'unfolded'"
            )

    def version_ready(self, version: str | None) -> bool:
        """Ready to serve that version (a degraded folded variant is not ready)."""
        self.check_version(version)
        return self.state == "ready" and not (version == "folded" and self.folded_degraded)


class Registry:
    """Every served model by name; `loaded` turns true when the startup loading has ended.

    `unloaded` names the models taken out of service (POST …/unload, or removed from the repository while
    polling) with the reason, so requests to them get that reason instead of "unknown model". Entries are
    replaced whole (`models[name] = new`, on the event loop's thread): a request holds the ServedModel it
    resolved, so requests in flight finish on the model they started on.
    """

    def __init__(self, names: list[str]) -> None:
        self.models = {name: ServedModel(name) for name in names}
        self.unloaded: dict[str, str] = {}
        self.loaded = False

    def get(self, name: str) -> ServedModel:
        try:
            return self.models[name]
        except KeyError:
            if name in self.unloaded:
                raise NotFoundError(
                    f"model {name!r} has no available versions: {self.unloaded[name]}; load it with "
                    f"POST /v2/repository/models/{name}/load"
                ) from None
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFoundError(f"unknown model {name!r}; available models: {known}") from None
