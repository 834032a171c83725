"""`bnfold verify REPO_DIR/NAME`: re-run every check on a written entry; needs no torch.

Checks, in order: the manifest (format, name); each variant's SHA-256 against model.json; onnx.checker on
both; BatchNormalization counts against model.json and the fold report (models/export/checks.py rule 2); both
variants run in onnxruntime (ORT_DISABLE_ALL) on calibration.npz with the declared output names and shapes;
folded agrees with unfolded within model.json's tolerance; for classification the arg-max agrees too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bnfold.folding.report import FoldReport
from bnfold.models.errors import BadInputError, VerificationError
from bnfold.models.export import checks
from bnfold.models.export.repository import read_calibration, read_manifest, sha256_bytes


@dataclass
class EntryVerification:
    """What was verified, one line per check, and the folded-vs-unfolded error."""

    entry: Path
    passed: list[str] = field(default_factory=list)
    max_abs_error: float = 0.0


def verify_entry(entry: Path) -> EntryVerification:
    """Run every check; raise VerificationError (or BadInputError for a non-entry) on the first failure."""
    if not entry.is_dir():
        raise BadInputError(f"{entry} is not a directory; give a repository entry REPO_DIR/NAME")
    result = EntryVerification(entry)
    manifest = read_manifest(entry)
    result.passed.append(f"manifest {manifest['format']} names {manifest['name']!r}")
    variants = {variant: _read_variant(entry, manifest, variant) for variant in ("unfolded", "folded")}
    result.passed.append("SHA-256 of both variants matches model.json")
    counts = {variant: checks.count_batchnorm(checks.check_onnx(data, variant)) for variant, data in variants.items()}
    result.passed.append("onnx.checker (full check) accepts both variants")
    _check_counts(manifest, counts)
    result.passed.append(f"BatchNormalization nodes: unfolded {counts['unfolded']}, folded {counts['folded']}")
    feeds = read_calibration(entry, manifest)
    outputs = {variant: checks.run_onnx(data, feeds) for variant, data in variants.items()}
    for variant, values in outputs.items():
        _check_outputs(manifest, variant, values, len(next(iter(feeds.values()))))
    tolerance = manifest["tolerance"]
    names = [spec["name"] for spec in manifest["outputs"]]
    found = checks.agreement(
        "folded", outputs["folded"], outputs["unfolded"], tolerance["atol"], tolerance["rtol"], names
    )
    checks.require(found, "unfolded.onnx")
    result.max_abs_error = found.max_abs
    result.passed.append(f"folded matches unfolded: max |Δ| = {found.max_abs:.3e} ≤ {found.bound:.3e}")
    if manifest.get("task") == "classification":
        checks.require_same_argmax(outputs["unfolded"], outputs["folded"])
        result.passed.append("arg-max of both variants agrees on every calibration sample")
    return result


def _read_variant(entry: Path, manifest: dict[str, Any], variant: str) -> bytes:
    description = manifest["variants"][variant]
    path = entry / description["file"]
    if not path.is_file():
        raise VerificationError(f"{path} is missing; rebuild the entry with bnfold fold-and-export")
    data = path.read_bytes()
    if sha256_bytes(data) != description["sha256"]:
        raise VerificationError(
            f"{path} has SHA-256 {sha256_bytes(data)[:12]}…, model.json says {description['sha256'][:12]}…: "
            "the file was truncated or replaced; rebuild the entry"
        )
    return data


def _check_counts(manifest: dict[str, Any], counts: dict[str, int]) -> None:
    for variant, count in counts.items():
        recorded = manifest["variants"][variant]["batchnorm_nodes"]
        if recorded != count:
            raise VerificationError(f"{variant}.onnx has {count} BatchNormalization nodes, model.json says {recorded}")
    try:
        report = FoldReport.from_json(manifest["fold_report"])
    except KeyError as missing:
        raise VerificationError(f"model.json's fold_report lacks {missing}; rebuild the entry") from None
    except (TypeError, ValueError) as error:
        raise VerificationError(f"model.json's fold_report is malformed: {error}; rebuild the entry") from None
    checks.check_batchnorm_counts(counts["unfolded"], counts["folded"], *checks.batchnorm_totals(report))


def _check_outputs(manifest: dict[str, Any], variant: str, values: list[NDArray[Any]], batch: int) -> None:
    declared = manifest["outputs"]
    if len(values) != len(declared):
        raise VerificationError(f"{variant}.onnx has {len(values)} outputs, model.json declares {len(declared)}")
    for spec, value in zip(declared, values, strict=True):
        expected = tuple(batch if size == -1 else size for size in spec["shape"])
        if value.shape != expected:
            raise VerificationError(
                f"{variant}.onnx output {spec['name']!r} has shape {value.shape}, model.json declares "
                f"{tuple(spec['shape'])}"
            )
        if not np.all(np.isfinite(value)):
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
            raise VerificationError(
                f"cannot certify the entry: {variant}.onnx output {spec['name']!r} is NaN or Inf at index {where} "
                "on calibration.npz; use calibration inputs in the model's range"
            )
