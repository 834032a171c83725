"""`bnfold fold-and-export` of a FrozenBatchNorm2d backbone: its frozen BNs are Mul/Add pairs in
unfolded.onnx (no BatchNormalization node), so the count check applies to "batchnorm" entries only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bnfold.contract.op_count import count_op
from bnfold.folding.report import FoldReport
from bnfold.models.errors import VerificationError
from bnfold.models.export.checks import batchnorm_totals, check_batchnorm_counts
from tests.models.cli_helpers import bnfold
from tests.nets import frozen_batchnorm

FACTORY = Path(frozen_batchnorm.__file__)


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


@pytest.mark.parametrize(("factory", "kind"), [("build", "frozen_batchnorm"), ("build_mixed", "frozen_batchnorm")])
def test_fold_and_export_of_a_frozen_backbone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, factory: str, kind: str
) -> None:
    ran = bnfold(
        capsys,
        "fold-and-export",
        "--model",
        f"{FACTORY}:{factory}",
        "--input-shape",
        "1,3,32,32",
        "--out",
        tmp_path,
        "--name",
        "frozen",
        "--json",
    )
    assert ran.code == 0, ran.err
    summary = ran.json()
    batchnorms = 1 if factory == "build_mixed" else 0
    assert summary["batchnorm_nodes"] == {"unfolded": batchnorms, "folded": 0}
    assert summary["fold_summary"] == "15/15 BatchNorm folded, 0 lowered, 0 kept"

    entry = tmp_path / "frozen"
    report = FoldReport.from_json(json.loads((entry / "model.json").read_text())["fold_report"])
    kinds = [e.kind for e in report]
    assert kinds.count(kind) == 15 - batchnorms and kinds.count("batchnorm") == batchnorms
    assert all(len(e.sources) == 2 for e in report if e.kind == kind)
    unfolded, folded = onnx.load(entry / "unfolded.onnx"), onnx.load(entry / "folded.onnx")
    assert count_op(unfolded, "Mul") >= 15 - batchnorms  # the frozen BNs survive as Mul/Add in unfolded
    assert count_op(folded, "Mul") == 0
    assert count_op(unfolded, "Conv") == count_op(folded, "Conv") == 15

    model = getattr(frozen_batchnorm, factory)()
    for batch in (1, 4):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        for variant in ("unfolded", "folded"):
            actual = run(entry / f"{variant}.onnx", x.numpy())
            assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()


def test_count_check_still_refuses_a_missing_batchnormalization_node() -> None:
    """Only "batchnorm" entries are counted, but for them the rule is unchanged."""
    report = FoldReport.from_json(
        {
            "entries": [
                {"bn": "bn1", "action": "folded_into_previous", "target": "conv1", "kind": "batchnorm"},
                {
                    "bn": "f1",
                    "action": "folded_into_previous",
                    "target": "conv2",
                    "kind": "frozen_batchnorm",
                    "sources": ["mul", "add"],
                },
                {"bn": "f2", "action": "kept", "reason": "r", "kind": "affine", "sources": ["mul_1"]},
            ]
        }
    )
    assert batchnorm_totals(report) == (1, 0)
    check_batchnorm_counts(1, 0, *batchnorm_totals(report))
    with pytest.raises(VerificationError) as refused:
        check_batchnorm_counts(0, 0, *batchnorm_totals(report))
    assert str(refused.value) == (
        "unfolded.onnx has 0 BatchNormalization node(s) but the fold report lists 1 BatchNorms: the exporter "
        "folded some of them; export with the dynamo exporter and optimize=False"
    )
