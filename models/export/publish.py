"""Verify a candidate entry (models/export/checks.py) and write it atomically into the repository; no torch.

Verification runs before anything is written: onnx.checker on both graphs, the BatchNormalization counts,
both graphs in onnxruntime (ORT_DISABLE_ALL) against the reference (the PyTorch model's outputs, or the
unfolded graph when there is no PyTorch model), and the arg-max for classifiers. The first failure raises
VerificationError and the repository is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from bnfold.folding.report import FoldReport
from bnfold.models.export import checks
from bnfold.models.export.manifest import Candidate, build_manifest
from bnfold.models.export.repository import FOLDED_FILE, UNFOLDED_FILE, entry_path, write_entry


@dataclass(frozen=True)
class Verified:
    """The measured figures of a candidate that passed every check."""

    batchnorm_nodes: dict[str, int]
    max_abs_error: dict[str, float]  # variant → max |Δ| against the reference
    unfolded_outputs: list[NDArray[Any]]


def verify_candidate(candidate: Candidate) -> Verified:
    """Run every check on `candidate`; raises VerificationError naming what failed and by how much."""
    graphs = {"unfolded": candidate.unfolded, "folded": candidate.folded}
    counts = {variant: checks.count_batchnorm(checks.check_onnx(data, variant)) for variant, data in graphs.items()}
    report = FoldReport.from_json(candidate.fold_report)
    checks.check_batchnorm_counts(counts["unfolded"], counts["folded"], *checks.batchnorm_totals(report))
    outputs = {variant: checks.run_onnx(data, candidate.inputs) for variant, data in graphs.items()}
    reference, against = candidate.reference, "the PyTorch model"
    if reference is None:
        reference, against = outputs["unfolded"], "unfolded.onnx"
    atol, rtol = candidate.tolerance["atol"], candidate.tolerance["rtol"]
    errors = {}
    for variant, values in outputs.items():
        found = checks.agreement(variant, values, reference, atol, rtol, candidate.output_names)
        checks.require(found, against)
        errors[variant] = found.max_abs
    if candidate.task == "classification":
        checks.require_same_argmax(outputs["unfolded"], outputs["folded"])
    return Verified(batchnorm_nodes=counts, max_abs_error=errors, unfolded_outputs=outputs["unfolded"])


def publish(candidate: Candidate, verified: Verified, repository: Path, name: str) -> Path:
    """Write REPO_DIR/NAME (temp dir + rename); returns the entry's path."""
    manifest = build_manifest(name, candidate, verified.unfolded_outputs, verified.batchnorm_nodes)
    files = {UNFOLDED_FILE: candidate.unfolded, FOLDED_FILE: candidate.folded}
    return write_entry(repository, name, manifest, files, candidate.inputs)


def check_target(repository: Path, name: str) -> Path:
    """Fail early, before any slow step, when REPO_DIR/NAME exists or NAME is not allowed."""
    return entry_path(repository, name)
