"""The package surface of bnfold.folding: every public name resolves, and the torch-free parts (report,
comparison, errors, plan vocabulary) load without importing torch, onnx or onnx-ir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import bnfold.folding
from bnfold.folding import Action, FoldEntry, FoldReport
from bnfold.folding.plan import LOWERING_DISABLED, Decision, not_folded, not_lowered

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "onnx", "onnx_ir", "onnxruntime")


def _modules_loaded_by(statements: str) -> list[str]:
    """Run `statements` in a fresh interpreter; the heavy top-level modules it imported."""
    script = f"""
import json, sys
{statements}
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "statements",
    [
        "from bnfold.folding import FoldReport, Tolerance",
        "import bnfold.folding.report",
        "from bnfold.folding import Action, FoldEntry, Discrepancy, discrepancy, BnfoldError, FoldingError",
        "import bnfold.folding.plan",
        "from bnfold.folding import count_op",
        "import bnfold.folding; bnfold.folding.FoldReport.from_json({'entries': []})",
    ],
)
def test_torch_free_names_import_neither_torch_nor_onnx(statements: str) -> None:
    assert _modules_loaded_by(statements) == []


def test_fold_imports_torch_only_when_asked_for() -> None:
    assert _modules_loaded_by("from bnfold.folding import fold") == ["torch"]


def test_every_public_name_resolves_to_its_defining_module() -> None:
    assert sorted(bnfold.folding.__all__) == bnfold.folding.__all__
    for name in bnfold.folding.__all__:
        value = getattr(bnfold.folding, name)
        assert getattr(value, "__name__", name) == name
        assert value.__module__.startswith(("bnfold.folding.", "bnfold.contract."))
    with pytest.raises(AttributeError, match="no attribute 'EquivalenceError'"):
        bnfold.folding.__getattr__("EquivalenceError")


def test_a_report_read_back_from_json_is_the_same_report() -> None:
    report = FoldReport(
        entries=[
            FoldEntry("a", Action.FOLDED_INTO_PREVIOUS, target="conv", max_error=1.5e-7),
            FoldEntry("b", Action.LOWERED, reason="x"),
            FoldEntry("c", Action.KEPT, reason="y"),
        ],
        max_output_error=2.5e-6,
    )
    data = json.loads(json.dumps(report.to_json()))
    assert FoldReport.from_json(data) == report
    assert FoldReport.from_json(data).to_json() == data
    assert report.count(Action.KEPT) == 1 and report.count(Action.FOLDED_INTO_NEXT) == 0


def test_decisions_and_refusals_read_the_same_in_both_engines() -> None:
    """The plan vocabulary both engines build their reports from (folding/plan.py)."""
    reason = not_folded("p", "n")
    assert reason == "not into the previous layer: p; not into the next layer: n"
    assert not_lowered(reason, LOWERING_DISABLED) == f"{reason}; not lowered: lowering is disabled"
    assert Decision.folded(Action.FOLDED_INTO_NEXT, "conv").entry("bn", 0.5) == FoldEntry(
        "bn", Action.FOLDED_INTO_NEXT, target="conv", max_error=0.5
    )
    assert Decision.kept("r").entry("bn") == FoldEntry("bn", Action.KEPT, reason="r")
    assert Decision.lowered("r").entry("bn") == FoldEntry("bn", Action.LOWERED, reason="r")
