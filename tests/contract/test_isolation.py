"""bnfold.contract imports neither torch nor onnx (nor the folding/models/service packages)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
MODULES = (
    "agreement",
    "calibration",
    "datatypes",
    "entry_files",
    "errors",
    "external_data",
    "hashing",
    "layout",
    "manifest",
    "npz_limits",
    "op_count",
)


def test_a_fresh_interpreter_importing_the_contract_loads_no_torch_and_no_onnx() -> None:
    imports = "; ".join(f"import bnfold.contract.{module}" for module in MODULES)
    script = (
        f"import sys; {imports}; "
        "heavy = ('torch', 'onnx', 'onnxruntime', 'bnfold.folding', 'bnfold.models', 'bnfold.service'); "
        "print(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + '.' for h in heavy))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_contract_module_is_listed() -> None:
    found = {path.stem for path in (REPOSITORY_ROOT / "contract").glob("*.py") if path.stem != "__init__"}
    assert found == set(MODULES)
