"""`fold_and_export(SPEC, out=REPO_DIR)`: load → fold → export both → verify → write REPO_DIR/NAME atomically.

The one code path behind `bnfold fold-and-export`, `bnfold build-default` and the test fixtures. Every
failure raises (BadInputError, VerificationError, or the folding side's BnfoldError) before the entry is
renamed into place, so nothing is left behind.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnfold.models.export import publish
from bnfold.models.export.choices import UserChoices
from bnfold.models.export.manifest import Candidate
from bnfold.models.export.repository import check_repository
from bnfold.models.export.spec_forms import Spec, parse_spec
from bnfold.models.export.variant_files import DEFAULT_EXTERNAL_DATA_ABOVE
from bnfold.models.progress import Progress

UNTRAINED_WARNING = (
    "warning: no --weights given: folding the freshly initialised weights of {spec}'s factory; "
    "pass --weights FILE (its trained state_dict) unless the factory loads them itself"
)


@dataclass
class ExportSummary:
    """What fold-and-export did: where, what was folded, how well it matches, how long it took."""

    name: str
    path: Path
    source: str
    fold_summary: str
    batchnorm_nodes: dict[str, int]
    max_abs_error: dict[str, float]  # variant → max |Δ| against `reference`
    reference: str  # "PyTorch" (the source model) or "unfolded.onnx" (ONNX input: no PyTorch model)
    metrics: dict[str, float]
    notes: list[str]
    seconds: float
    task: str = "regression"
    step_seconds: dict[str, float] = field(default_factory=dict)
    train_seconds: float | None = None
    load_seconds: float = 0.0

    @property
    def export_seconds(self) -> float:
        """Fold + export + verify + write: everything but loading (and training) the model."""
        return self.seconds - self.load_seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "name": self.name,
            "path": str(self.path),
            "source": self.source,
            "fold_summary": self.fold_summary,
            "batchnorm_nodes": self.batchnorm_nodes,
            "max_abs_error": self.max_abs_error,
            "reference": self.reference,
            "metrics": self.metrics,
            "notes": self.notes,
            "task": self.task,
            "seconds": round(self.seconds, 3),
            "step_seconds": {step: round(value, 3) for step, value in self.step_seconds.items()},
            "train_seconds": self.train_seconds,
            "export_seconds": round(self.export_seconds, 3),
        }


def fold_and_export(
    spec: str,
    *,
    out: Path,
    name: str | None = None,
    weights: Path | None = None,
    input_shape: str | None = None,
    task: str | None = None,
    tolerance: tuple[float, float] | None = None,
    cache_dir: Path | None = None,
    external_data_above: int = DEFAULT_EXTERNAL_DATA_ABOVE,
    progress: Progress | None = None,
    choices: UserChoices | None = None,
) -> ExportSummary:
    """Build and write one repository entry from a SPEC; see the module docstring."""
    progress = progress or Progress(quiet=True)
    start = time.perf_counter()
    check_repository(out)
    if name is not None:
        publish.check_target(out, name)
    parsed = parse_spec(spec)
    chosen = choices or UserChoices()
    candidate, default_name, train_seconds, load_seconds = _candidate(
        parsed, weights, input_shape, cache_dir, progress, chosen
    )
    name = name or default_name
    publish.check_target(out, name)
    if task is not None:
        candidate.task = task
    if tolerance is not None:
        candidate.tolerance = {"atol": tolerance[0], "rtol": tolerance[1]}
    with progress.step("verifying (onnx.checker, onnxruntime, BatchNorm counts)"):
        verified, path = publish.verify_and_publish(candidate, out, name, external_data_above)
    return ExportSummary(
        name=name,
        path=path,
        source=spec,
        fold_summary=str(candidate.fold_report["summary"]),
        batchnorm_nodes=verified.batchnorm_nodes,
        max_abs_error=verified.max_abs_error,
        reference="PyTorch" if candidate.reference is not None else "unfolded.onnx",
        metrics=candidate.metrics,
        notes=candidate.notes,
        task=candidate.task,
        seconds=time.perf_counter() - start,
        step_seconds=dict(progress.seconds),
        train_seconds=train_seconds,
        load_seconds=load_seconds,
    )


def _candidate(
    spec: Spec,
    weights: Path | None,
    input_shape: str | None,
    cache_dir: Path | None,
    progress: Progress,
    choices: UserChoices,
) -> tuple[Candidate, str, float | None, float]:
    """(candidate, entry name, seconds spent training or None, seconds spent loading) for any SPEC form."""
    if spec.kind == "onnx":
        from bnfold.models.export.onnx_candidate import candidate_from_onnx

        candidate = candidate_from_onnx(Path(spec.target), weights, input_shape, progress, choices)
        return candidate, spec.default_name, None, 0.0
    from bnfold.models.export.sources import load_spec
    from bnfold.models.export.torch_candidate import candidate_from_model
    from bnfold.models.export.user_inputs import apply_names, user_samples

    start = time.perf_counter()
    with progress.step(f"loading {spec.text}" + (" (training when not cached)" if spec.kind == "zoo" else "")):
        samples = user_samples(choices)
        loaded = load_spec(spec, weights=weights, input_shape=input_shape, cache_dir=cache_dir, samples=samples,
                           input_names=choices.input_names)  # fmt: skip
        apply_names(loaded, choices.input_names, choices.output_names)
    load_seconds = time.perf_counter() - start
    if spec.kind in ("file", "module") and weights is None:
        print(UNTRAINED_WARNING.format(spec=spec.text), file=sys.stderr)
    if spec.kind == "zoo":
        how = "weights from the cache" if loaded.train_seconds is None else f"trained in {loaded.train_seconds:.1f} s"
        progress.say(f"  {how}; held-out {loaded.metrics}")
    if spec.kind == "pt2":
        from bnfold.models.export.onnx_candidate import candidate_from_archive

        candidate = candidate_from_archive(loaded, progress)
    else:
        candidate = candidate_from_model(loaded, progress)
    return candidate, loaded.default_name, loaded.train_seconds, load_seconds
