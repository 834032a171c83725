"""The default repository: every zoo model, built by the same path as `bnfold fold-and-export --model zoo:NAME`.

An entry that already exists and passes `verify_entry` is reused as it is. An entry that exists but fails
verification is an error (the fix is to remove it): build-default never deletes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnfold.models.errors import BadInputError, ModelsError
from bnfold.models.export.entry_check import verify_entry
from bnfold.models.export.fold_and_export import ExportSummary, fold_and_export
from bnfold.models.export.repository import check_repository, read_manifest
from bnfold.models.progress import Progress
from bnfold.models.zoo.catalog import ZOO


@dataclass(frozen=True)
class DefaultEntry:
    """One zoo model's line in the build-default summary."""

    name: str
    status: str  # "built" or "reused"
    fold_summary: str
    metrics: dict[str, float]
    train_seconds: float | None
    export_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_default(out: Path, *, cache_dir: Path | None = None, progress: Progress | None = None) -> list[DefaultEntry]:
    """Build (or reuse) REPO_DIR/NAME for every zoo model; returns one DefaultEntry per model."""
    progress = progress or Progress(quiet=True)
    check_repository(out)
    return [_reuse(out / name) or _build(name, out, cache_dir, progress) for name in ZOO]


def _reuse(entry: Path) -> DefaultEntry | None:
    if not entry.exists():
        return None
    try:
        verify_entry(entry)
    except ModelsError as error:
        raise BadInputError(
            f"{entry} exists but fails verification ({error}); remove it and run build-default again"
        ) from None
    manifest = read_manifest(entry)
    summary = str(manifest["fold_report"]["summary"])
    return DefaultEntry(entry.name, "reused", summary, dict(manifest.get("metrics", {})), None, None)


def _build(name: str, out: Path, cache_dir: Path | None, progress: Progress) -> DefaultEntry:
    progress.say(f"[bold]{name}[/bold]")
    summary: ExportSummary = fold_and_export(f"zoo:{name}", out=out, cache_dir=cache_dir, progress=progress)
    return DefaultEntry(
        name, "built", summary.fold_summary, summary.metrics, summary.train_seconds, round(summary.export_seconds, 3)
    )
