"""Fold-time checks use the contract's rule: an INCONCLUSIVE verdict is refused, never certified, with the
output and the index named; DISAGREE names the excess."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bnfold.models.errors import VerificationError
from bnfold.models.export import checks
from tests.models.cli_helpers import bnfold
from tests.service.builders import write_entry
from tests.service.test_non_finite import huge, overflow_weights


def test_inconclusive_reference_is_refused_with_output_and_index() -> None:
    reference = [np.array([[1.0, 2.0]], np.float32), np.array([[3.0, np.inf]], np.float32)]
    candidate = [reference[0].copy(), np.array([[3.0, 5.0]], np.float32)]
    found = checks.agreement("folded", candidate, reference, 1e-6, 1e-5, ["a", "b"])
    assert not found.ok and found.judgement.name == "b" and found.max_abs == np.inf
    with pytest.raises(VerificationError) as refused:
        checks.require(found, "the PyTorch model")
    assert str(refused.value) == (
        "cannot certify folded.onnx against the PyTorch model: output 'b' is NaN or Inf in the reference at "
        "index (0, 1) where folded.onnx differs; use calibration inputs in the model's range"
    )


def test_identical_non_finite_values_agree_and_the_worst_output_is_reported() -> None:
    reference = [np.array([[np.nan, 2.0]]), np.array([[3.0, 4.0]])]
    candidate = [reference[0].copy(), np.array([[3.0, 4.5]])]
    found = checks.agreement("folded", candidate, reference, 1e-6, 1e-5, ["a", "b"])
    assert found.judgement.name == "b" and found.max_abs == 0.5 and found.bound == pytest.approx(1e-6 + 4e-5)
    with pytest.raises(VerificationError, match=r"folded.onnx differs from unfolded.onnx by max \|Δ\| = 5.000e-01"):
        checks.require(found, "unfolded.onnx")
    exact = checks.agreement("unfolded", reference, reference, 0.0, 0.0)
    assert exact.ok and exact.max_abs == 0.0
    checks.require(exact, "the PyTorch model")


def test_argmax_mismatches_are_counted_per_sample() -> None:
    unfolded = [np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])]
    with pytest.raises(VerificationError, match="different classes for 2 calibration sample"):
        checks.require_same_argmax(unfolded, [np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])])
    checks.require_same_argmax(unfolded, [unfolded[0] + 1e-9])


def test_verify_refuses_a_calibration_batch_that_overflows_unfolded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    write_entry(tmp_path, "overflow", rng, weights=overflow_weights(rng))
    entry = tmp_path / "overflow"
    manifest = json.loads((entry / "model.json").read_text())
    manifest["fold_report"]["entries"] = [{"bn": "bn", "action": "folded_into_previous"}]
    (entry / "model.json").write_text(json.dumps(manifest))
    assert bnfold(capsys, "verify", entry).code == 0  # the entry as written is certifiable
    np.savez(entry / "calibration.npz", input=huge(rng))
    ran = bnfold(capsys, "verify", entry)
    assert ran.code == 1
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnfold verify: cannot certify the entry: unfolded.onnx output ")
    assert "'logits' is NaN or Inf at index (" in lines[0]
    assert lines[0].endswith("on calibration.npz; use calibration inputs in the model's range")
