"""fold-and-export for every SPEC form; outputs checked against PyTorch with an independent ORT session."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bnfold.folding.export import export_onnx
from tests.models import tiny_nets
from tests.models.cli_helpers import bnfold, repository_contents

TINY = "tests/models/tiny_nets.py"


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x})
    return np.asarray(output)


def _bn_nodes(path: Path) -> int:
    return sum(node.op_type == "BatchNormalization" for node in onnx.load(str(path)).graph.node)


def _assert_matches(entry: Path, model: nn.Module, *, batch: int = 5) -> None:
    """Both variants equal the PyTorch model on fresh inputs of another batch size (dynamic batch)."""
    x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x).numpy()
    for variant in ("unfolded", "folded"):
        got = _run(entry / f"{variant}.onnx", x.numpy())
        assert np.max(np.abs(got - expected)) <= 1e-6 + 1e-5 * np.max(np.abs(expected)), variant


def _manifest(entry: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((entry / "model.json").read_text())


@pytest.mark.parametrize("spec", [f"{TINY}:build", "tests.models.tiny_nets:build"], ids=["file", "module"])
def test_factory_spec_with_weights(capsys: pytest.CaptureFixture[str], tmp_path: Path, spec: str) -> None:
    reference = tiny_nets.randomise_batchnorm(tiny_nets.ConvBnHead(), seed=3)
    weights = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), weights)
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", spec, "--weights", weights, "--input-shape", "1,3,8,8",
                 "--name", "tiny", "--task", "classification", "--out", repository, "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    summary = ran.json()
    assert summary["fold_summary"] == "1/1 BatchNorm folded, 0 lowered, 0 kept"
    assert summary["batchnorm_nodes"] == {"unfolded": 1, "folded": 0}
    entry = repository / "tiny"
    assert _bn_nodes(entry / "unfolded.onnx") == 1 and _bn_nodes(entry / "folded.onnx") == 0
    _assert_matches(entry, reference)  # the weights file's numbers, not the factory's
    provenance = _manifest(entry)["provenance"]
    assert provenance["source"] == spec
    assert provenance["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert _manifest(entry)["task"] == "classification"
    assert repository_contents(repository) == ["tiny", *(f"tiny/{f}" for f in
           ("calibration.npz", "folded.onnx", "model.json", "unfolded.onnx"))]  # fmt: skip


def test_default_name_from_the_factory_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--input-shape", "1,3,8,8", "--out", tmp_path)
    assert ran.code == 0, ran.err
    assert (tmp_path / "tiny_nets" / "model.json").is_file()
    assert ran.out.startswith(f"wrote {tmp_path / 'tiny_nets'}: 1/1 BatchNorm folded")
    assert "✓ exporting folded.onnx" in ran.err and "✓ verifying" in ran.err  # progress goes to stderr


def test_torch_export_archive(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = tiny_nets.randomise_batchnorm(tiny_nets.ConvBnHead(), seed=4)
    program = torch.export.export(model, (torch.randn(4, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    archive = tmp_path / "tiny.pt2"
    torch.export.save(program, archive)
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", archive, "--out", repository, "--json")
    assert ran.code == 0, ran.err
    assert ran.json()["batchnorm_nodes"] == {"unfolded": 1, "folded": 0}
    _assert_matches(repository / "tiny", model)
    assert (
        _manifest(repository / "tiny")["provenance"]["weights_sha256"]
        == hashlib.sha256(archive.read_bytes()).hexdigest()
    )


def test_archive_with_a_fixed_batch_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    archive = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(tiny_nets.build(), (torch.randn(4, 3, 8, 8),)), archive)
    ran = bnfold(capsys, "fold-and-export", "--model", archive, "--out", tmp_path / "repo")
    assert ran.code == 1 and "fixed batch size 4" in ran.err and "dynamic_shapes" in ran.err
    assert repository_contents(tmp_path / "repo") == []


def test_onnx_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = tiny_nets.randomise_batchnorm(tiny_nets.ConvBnHead(), seed=5)
    source = tmp_path / "tiny.onnx"
    proto = export_onnx(model, (torch.randn(2, 3, 8, 8),), input_names=["image"], output_names=["scores"])
    source.write_bytes(proto.SerializeToString())
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", source, "--out", repository, "--json")
    assert ran.code == 0, ran.err
    summary = ran.json()
    assert summary["reference"] == "unfolded.onnx"
    entry = repository / "tiny"
    assert (entry / "unfolded.onnx").read_bytes() == source.read_bytes()
    assert _bn_nodes(entry / "folded.onnx") == 0
    _assert_matches(entry, model)
    manifest = _manifest(entry)
    assert manifest["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
    assert manifest["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 2]}]


def test_model_without_batchnorm_is_allowed_and_said(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:no_batchnorm", "--input-shape", "1,3,8,8",
                 "--out", repository)  # fmt: skip
    assert ran.code == 0, ran.err
    assert "note: the model has no BatchNorm: folded.onnx equals unfolded.onnx" in ran.out
    entry = repository / "tiny_nets"
    assert (entry / "folded.onnx").read_bytes() == (entry / "unfolded.onnx").read_bytes()
    assert _manifest(entry)["fold_report"]["entries"] == []
    _assert_matches(entry, tiny_nets.no_batchnorm())


def test_zoo_spec_uses_the_cached_weights(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, zoo_cache_dir: Path, zoo_repository: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """fold-and-export --model zoo:NAME writes the same ONNX files as the default repository's entry."""
    monkeypatch.setenv("BNFOLD_CACHE_DIR", str(zoo_cache_dir))
    ran = bnfold(capsys, "fold-and-export", "--model", "zoo:breast_cancer_mlp", "--out", tmp_path, "--json")
    assert ran.code == 0, ran.err
    assert ran.json()["train_seconds"] is None  # from the cache, not retrained
    for variant in ("unfolded.onnx", "folded.onnx"):
        assert (tmp_path / "breast_cancer_mlp" / variant).read_bytes() == (
            zoo_repository / "breast_cancer_mlp" / variant
        ).read_bytes()


def test_verify_and_inspect(capsys: pytest.CaptureFixture[str], zoo_repository: Path) -> None:
    entry = zoo_repository / "digits_resnet"
    ran = bnfold(capsys, "verify", entry)
    assert ran.code == 0, ran.err
    assert "✓ BatchNormalization nodes: unfolded 6, folded 0" in ran.out
    assert ran.out.strip().endswith(f"{entry}: verified")
    ran = bnfold(capsys, "inspect", entry, "--json")
    assert ran.code == 0
    report = ran.json()["fold_report"]
    assert [e["bn"] for e in report["entries"]] == ["stem.1", "layer1.bn1", "layer1.bn2", "layer2.bn1",
                                                    "layer2.bn2", "layer2.shortcut.1"]  # fmt: skip
    ran = bnfold(capsys, "inspect", entry)
    assert "layer2.shortcut.1" in ran.out and "folded_into_previous" in ran.out


def test_verify_refuses_a_tampered_entry(capsys: pytest.CaptureFixture[str], zoo_repository_copy: Path) -> None:
    folded = zoo_repository_copy / "digits_mobilenet" / "folded.onnx"
    folded.write_bytes(folded.read_bytes()[:-10])
    ran = bnfold(capsys, "verify", folded.parent)
    assert ran.code == 1
    assert ran.err.strip().splitlines() == [
        f"bnfold verify: {folded} has SHA-256 {hashlib.sha256(folded.read_bytes()).hexdigest()[:12]}…, model.json "
        f"says {_manifest(folded.parent)['variants']['folded']['sha256'][:12]}…: the file was truncated or replaced; "
        "rebuild the entry"
    ]


def test_verify_catches_a_swapped_unfolded_graph(capsys: pytest.CaptureFixture[str], zoo_repository_copy: Path) -> None:
    """unfolded.onnx replaced by the folded graph (digest updated): the BN count check fails."""
    entry = zoo_repository_copy / "digits_autoencoder"
    shutil.copy(entry / "folded.onnx", entry / "unfolded.onnx")
    manifest = _manifest(entry)
    manifest["variants"]["unfolded"]["sha256"] = hashlib.sha256((entry / "unfolded.onnx").read_bytes()).hexdigest()
    (entry / "model.json").write_text(json.dumps(manifest))
    ran = bnfold(capsys, "verify", entry)
    assert ran.code == 1
    assert "unfolded.onnx has 0 BatchNormalization nodes, model.json says 4" in ran.err


def test_verify_refuses_an_unknown_fold_action(capsys: pytest.CaptureFixture[str], zoo_repository_copy: Path) -> None:
    """A fold report entry whose action is not one of the report's actions is named, not counted as folded."""
    entry = zoo_repository_copy / "digits_autoencoder"
    manifest = _manifest(entry)
    bn = manifest["fold_report"]["entries"][0]["bn"]
    manifest["fold_report"]["entries"][0]["action"] = "merged"
    (entry / "model.json").write_text(json.dumps(manifest))
    ran = bnfold(capsys, "verify", entry)
    assert ran.code == 1
    assert ran.err.strip().splitlines() == [
        f"bnfold verify: model.json's fold_report is malformed: unknown action 'merged' for {bn!r}; expected one of "
        "['folded_into_previous', 'folded_into_next', 'lowered_to_scale_shift', 'kept']; rebuild the entry"
    ]


def test_build_default_reuses_a_valid_repository(capsys: pytest.CaptureFixture[str], zoo_repository_copy: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in zoo_repository_copy.rglob("*")}
    ran = bnfold(capsys, "build-default", "--out", zoo_repository_copy)
    assert ran.code == 0, ran.err
    assert ran.out.strip() == f"{zoo_repository_copy}: already built and valid (4 models); nothing to do"
    assert {p: p.stat().st_mtime_ns for p in zoo_repository_copy.rglob("*")} == before


def test_build_default_refuses_a_broken_entry(capsys: pytest.CaptureFixture[str], zoo_repository_copy: Path) -> None:
    (zoo_repository_copy / "digits_resnet" / "model.json").write_text("{")
    ran = bnfold(capsys, "build-default", "--out", zoo_repository_copy)
    assert ran.code == 1
    assert "digits_resnet exists but fails verification" in ran.err and "remove it" in ran.err
