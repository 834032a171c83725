"""Verify a candidate entry (models/export/checks.py) and write it atomically into the repository; no torch.

Both variants are written into the entry's hidden staging directory first (with external data when the model
needs it, models/export/variant_files.py) and verified there, from the very files the entry will hold:
onnx.checker on both graphs, the BatchNormalization counts, both graphs in onnxruntime (ORT_DISABLE_ALL)
against the reference (the PyTorch model's outputs, or the unfolded graph when there is no PyTorch model),
and the arg-max for classifiers. The first failure raises
VerificationError, the staging directory is removed and the repository is untouched.
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from numpy.typing import NDArray

from bnfold.contract.layout import VARIANT_FILES
from bnfold.folding.onnx_files import load_lazy
from bnfold.folding.report import Action, FoldReport
from bnfold.models.export import checks
from bnfold.models.export.manifest import Candidate, build_manifest
from bnfold.models.export.repository import entry_path, staged_entry
from bnfold.models.export.variant_files import (
    DEFAULT_EXTERNAL_DATA_ABOVE,
    WrittenVariant,
    needs_external_data,
    write_variant,
)


@dataclass(frozen=True)
class Verified:
    """The measured figures of a candidate that passed every check."""

    batchnorm_nodes: dict[str, int]
    max_abs_error: dict[str, float]  # variant → max |Δ| against the reference
    unfolded_outputs: list[NDArray[Any]]


def write_variants(candidate: Candidate, directory: Path, external_data_above: int) -> dict[str, WrittenVariant]:
    """Both variants written into `directory`, with external data when the model needs it (variant_files)."""
    models = {"unfolded": candidate.unfolded, "folded": candidate.folded}
    external = any(
        needs_external_data(model, candidate.source_external_data, external_data_above) for model in models.values()
    )
    return {
        variant: write_variant(model, directory, VARIANT_FILES[variant], external) for variant, model in models.items()
    }


def _now_the_files(candidate: Candidate, written: dict[str, WrittenVariant]) -> None:
    """A variant from the file path (an onnx_ir model) becomes its file in the staging directory, memory-mapped
    (until the entry is renamed into place nothing reads it): the fold's new weights and the source's memory
    maps are released before the checks open onnxruntime sessions, so a large model is not held in memory
    twice."""
    if not any(isinstance(model, ir.Model) for model in (candidate.unfolded, candidate.folded)):
        return
    for variant, files in written.items():
        proto = onnx.load_model(str(files.path), load_external_data=False)
        setattr(candidate, variant, load_lazy(proto, files.path.parent))
    gc.collect()  # onnx_ir graphs are reference cycles: free the old ones now


def verify_candidate(
    candidate: Candidate,
    written: dict[str, WrittenVariant] | None = None,
    external_data_above: int = DEFAULT_EXTERNAL_DATA_ABOVE,
) -> Verified:
    """Run every check on the files of `candidate` as written (into a scratch directory when `written` is None);
    raises VerificationError naming what failed and by how much."""
    if written is None:
        with tempfile.TemporaryDirectory(prefix="bnfold-verify-") as scratch:
            return verify_candidate(candidate, write_variants(candidate, Path(scratch), external_data_above))
    paths = {variant: files.path for variant, files in written.items()}
    counts = {variant: checks.count_batchnorm(checks.check_onnx(path, variant)) for variant, path in paths.items()}
    report = FoldReport.from_json(candidate.fold_report)
    ops = report.batchnorm_ops
    kept = sum(entry.action is Action.KEPT for entry in ops)
    checks.check_batchnorm_counts(counts["unfolded"], counts["folded"], len(ops), kept)
    outputs = {variant: checks.run_onnx(path, candidate.inputs) for variant, path in paths.items()}
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


def verify_and_publish(
    candidate: Candidate, repository: Path, name: str, external_data_above: int = DEFAULT_EXTERNAL_DATA_ABOVE
) -> tuple[Verified, Path]:
    """Write both variants into the hidden staging directory, verify those very files, then add calibration.npz
    and model.json and rename REPO_DIR/NAME into place; on any failure nothing is left behind."""
    with staged_entry(repository, name) as staged:
        written = write_variants(candidate, staged.path, external_data_above)
        _now_the_files(candidate, written)
        verified = verify_candidate(candidate, written)
        manifest = build_manifest(name, candidate, verified.unfolded_outputs, verified.batchnorm_nodes, written)
        staged.finish(manifest, candidate.inputs)
    return verified, staged.target


def check_target(repository: Path, name: str) -> Path:
    """Fail early, before any slow step, when REPO_DIR/NAME exists or NAME is not allowed."""
    return entry_path(repository, name)
