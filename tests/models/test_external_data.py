"""ONNX with external data, end to end with the real CLI (subprocesses in other working directories), a real
server on loopback and real onnxruntime.

A dynamo export with external data (`m.onnx` + `m.onnx.data`) is folded from another working directory; the
entry holds every file it needs, each covered by model.json's SHA-256s; it verifies and serves from a third
directory after the source is deleted. Tampering with the entry's external data, or a `location` that leaves
the entry (`..`, absolute, a symlink out), an undeclared one or a non-regular file, makes the entry unavailable
and `bnfold verify` fail, naming the file and the rule.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from pydantic import SecretStr

from bnfold.contract.external_data import external_references
from bnfold.contract.hashing import sha256_file
from bnfold.contract.op_count import count_op
from bnfold.service.settings import Settings
from tests.models.external_nets import (
    ENTRY_FILES,
    INLINE_FILES,
    assert_self_contained,
    build,
    export_with_external_data,
)
from tests.service.oracle import json_request, run_directly
from tests.service.server import RunningServer, running_server

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "external-token"
NOT_READY = "is not ready; the reason is shown with the bearer token and in the server log"


def cli(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real `bnfold` command, run in `cwd` (this worktree's code on PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bnfold.cli", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """REPO/m folded by the CLI from another directory out of a dynamo export with external data, whose
    source directory is then deleted; and the PyTorch model it came from."""
    root = tmp_path_factory.mktemp("external")
    source, second = root / "source", root / "second"
    source.mkdir()
    second.mkdir()
    model = build()
    export_with_external_data(model, source / "m.onnx")
    assert sorted(path.name for path in source.iterdir()) == ["m.onnx", "m.onnx.data"]
    ran = cli(second, "fold-and-export", "--model", "../source/m.onnx", "--out", root / "repo")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"wrote {root / 'repo' / 'm'}: 1/1 BatchNorm folded")
    shutil.rmtree(source)
    return root / "repo", model


def test_the_entry_holds_every_file_it_loads_each_hashed(built: tuple[Path, torch.nn.Module]) -> None:
    entry = built[0] / "m"
    manifest = assert_self_contained(entry)
    for variant in ("unfolded", "folded"):
        spec, data = manifest["variants"][variant], entry / f"{variant}.onnx.data"
        references = external_references((entry / spec["file"]).read_bytes())
        assert {reference.location for reference in references} == {data.name}
        assert "conv.weight" in {reference.tensor for reference in references} or variant == "folded"
    unfolded = onnx.load(str(entry / "unfolded.onnx"))  # resolved relative to the file, not the cwd
    folded = onnx.load(str(entry / "folded.onnx"))
    assert (count_op(unfolded), count_op(folded)) == (1, 0)
    assert manifest["variants"]["unfolded"]["batchnorm_nodes"] == 1


def test_verify_from_a_third_directory(built: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    entry = built[0] / "m"
    ran = cli(tmp_path, "verify", entry)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert "✓ SHA-256 of both variants and of their 2 external data file(s) matches model.json" in lines
    assert lines[-1] == f"{entry}: verified"


def test_served_from_a_third_directory_answers_as_onnxruntime_and_pytorch(
    built: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository, model = built
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(11).normal(size=(5, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    with running_server(Settings(repository=repository)) as server:
        for variant in ("folded", "unfolded"):
            response = server.client.post(f"/v2/models/m/versions/{variant}/infer", json=json_request(x))
            assert response.status_code == 200, response.text
            got = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(5, 4)
            np.testing.assert_allclose(got, run_directly(repository / "m", variant, x), rtol=1e-5, atol=1e-6)
            assert np.max(np.abs(got - expected)) <= 1e-5 * max(1.0, float(np.max(np.abs(expected))))


def _copy_entry(built: tuple[Path, torch.nn.Module], repository: Path, name: str) -> Path:
    entry = repository / name
    shutil.copytree(built[0] / "m", entry)
    manifest = json.loads((entry / "model.json").read_text())
    manifest["name"] = name
    (entry / "model.json").write_text(json.dumps(manifest))
    return entry


def _negate_weights(data: Path) -> None:
    """Every float32 of the external data file negated: the conv weight changes sign, the predictions flip."""
    values = np.fromfile(data, dtype=np.float32)
    (-values).tofile(data)


def test_tampered_external_data_fails_verify_and_makes_the_entry_unavailable(
    built: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    _copy_entry(built, repository, "good")
    bad = _copy_entry(built, repository, "bad")
    data = bad / "folded.onnx.data"
    declared = sha256_file(data)
    _negate_weights(data)
    x = np.random.default_rng(5).normal(size=(4, 3, 8, 8)).astype(np.float32)
    assert not np.allclose(run_directly(bad, "folded", x), run_directly(bad, "unfolded", x), atol=1e-3)
    reason = (
        f"sha256 of folded.onnx.data is {sha256_file(data)[:16]}..., model.json says {declared[:16]}...: "
        "the file was truncated or replaced; rebuild the entry"
    )
    ran = cli(tmp_path, "verify", bad)
    assert (ran.returncode, ran.stderr.strip()) == (1, f"bnfold verify: {bad}: {reason}")
    ran = cli(tmp_path, "verify", repository)
    assert ran.returncode == 1
    assert ran.stdout.splitlines()[0] == f"✗ bad: {bad}: {reason}"
    assert ran.stdout.splitlines()[1].startswith("✓ good: verified, 5 checks passed, folded vs unfolded max |Δ| = ")
    assert ran.stdout.splitlines()[2] == f"{repository}: 1 of 2 entries pass verify"
    assert ran.stderr.strip() == "bnfold verify: 1 of 2 entries fail"
    with running_server(Settings(repository=repository, api_key=SecretStr(TOKEN))) as server:
        _assert_unavailable(server, "bad", reason)
        good = server.client.get("/v2/models/good/ready", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200


def _assert_unavailable(server: RunningServer, name: str, reason: str) -> None:
    public = server.client.get(f"/v2/models/{name}/ready")
    assert (public.status_code, public.json()) == (503, {"error": f"model {name!r} {NOT_READY}"})
    told = server.client.get(f"/v2/models/{name}/ready", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (told.status_code, told.json()) == (503, {"error": f"model {name!r} is not ready: {reason}"})


def _relocate(entry: Path, location: str, declared: list[dict[str, str]]) -> None:
    """Point unfolded.onnx's external tensors at `location`; model.json lists `declared` and the new digest."""
    path = entry / "unfolded.onnx"
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for item in tensor.external_data:
            if item.key == "location":
                item.value = location
    path.write_bytes(model.SerializeToString())
    manifest = json.loads((entry / "model.json").read_text())
    manifest["variants"]["unfolded"].update(sha256=sha256_file(path), external_data=declared)
    (entry / "model.json").write_text(json.dumps(manifest))


def _outside_copy(entry: Path) -> Path:
    outside = entry.parent.parent / "outside.data"
    shutil.copy(entry / "unfolded.onnx.data", outside)
    return outside


SHAPE = ("--input-shape", "1,3,8,8")
RULE = "external data must be a file inside the entry directory"


def _case_parent(entry: Path) -> tuple[str, list[dict[str, str]], str]:
    shutil.copy(entry / "unfolded.onnx.data", entry.parent / "x")
    declared = [{"file": "../x", "sha256": sha256_file(entry.parent / "x")}]
    return "../x", declared, f"unfolded.onnx's external data '../x' contains '..'; {RULE}"


def _case_absolute(entry: Path) -> tuple[str, list[dict[str, str]], str]:
    declared = [{"file": "/etc/passwd", "sha256": sha256_file(Path("/etc/passwd"))}]
    return "/etc/passwd", declared, f"unfolded.onnx's external data '/etc/passwd' is an absolute path; {RULE}"


def _case_symlink(entry: Path) -> tuple[str, list[dict[str, str]], str]:
    outside = _outside_copy(entry)
    (entry / "link.data").symlink_to(outside)
    declared = [{"file": "link.data", "sha256": sha256_file(outside)}]
    reason = "unfolded.onnx's external data 'link.data' resolves outside the entry directory (a symlink); copy the "
    return "link.data", declared, reason + "file into the entry"


def _case_fifo(entry: Path) -> tuple[str, list[dict[str, str]], str]:
    os.mkfifo(entry / "pipe.data")
    declared = [{"file": "pipe.data", "sha256": "0" * 64}]
    reason = "unfolded.onnx's external data 'pipe.data' is not a regular file; external data must be a regular file"
    return "pipe.data", declared, reason


def _case_undeclared(entry: Path) -> tuple[str, list[dict[str, str]], str]:
    reason = (
        "unfolded.onnx loads tensor 'conv.weight' from 'unfolded.onnx.data', which model.json does not list under "
        "variants.unfolded: its bytes are not covered by a SHA-256; rebuild the entry"
    )
    return "unfolded.onnx.data", [], reason


CASES = {
    "parent": _case_parent,
    "absolute": _case_absolute,
    "symlink": _case_symlink,
    "fifo": _case_fifo,
    "undeclared": _case_undeclared,
}


@pytest.fixture(scope="module")
def refused(built: tuple[Path, torch.nn.Module], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A repository of one entry per refused location, plus an untouched one, and a server over it."""
    repository = tmp_path_factory.mktemp("refused") / "repo"
    reasons = {}
    for name, case in CASES.items():
        entry = _copy_entry(built, repository, name)
        location, declared, reasons[name] = case(entry)
        _relocate(entry, location, declared)
    _copy_entry(built, repository, "good")
    with running_server(Settings(repository=repository, api_key=SecretStr(TOKEN))) as server:
        yield repository, reasons, server


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_external_location_outside_the_rules_is_refused(refused: Any, name: str, tmp_path: Path) -> None:
    repository, reasons, server = refused
    _assert_unavailable(server, name, reasons[name])
    ran = cli(tmp_path, "verify", repository / name)
    assert (ran.returncode, ran.stderr.strip()) == (1, f"bnfold verify: {repository / name}: {reasons[name]}")


def test_the_good_entry_beside_refused_ones_serves(refused: Any) -> None:
    _, _, server = refused
    states = {m["name"]: m["state"] for m in server.client.get(
        "/v2/models", headers={"Authorization": f"Bearer {TOKEN}"}).json()["models"]}  # fmt: skip
    assert states == {**dict.fromkeys(CASES, "unavailable"), "good": "ready"}


def test_a_low_threshold_writes_a_pytorch_model_with_external_data(tmp_path: Path) -> None:
    spec = f"{ROOT / 'tests' / 'models' / 'external_nets.py'}:build"
    ran = cli(tmp_path, "fold-and-export", "--model", spec, *SHAPE, "--external-data-above", "0", "--out", "repo")
    assert ran.returncode == 0, ran.stderr
    entry = tmp_path / "repo" / "external_nets"
    assert {path.name for path in entry.iterdir()} == ENTRY_FILES
    ran = cli(tmp_path, "fold-and-export", "--model", spec, *SHAPE, "--name", "inline", "--out", "repo")
    assert ran.returncode == 0, ran.stderr
    assert {path.name for path in (tmp_path / "repo" / "inline").iterdir()} == INLINE_FILES
    manifest = json.loads((tmp_path / "repo" / "inline" / "model.json").read_text())
    assert [manifest["variants"][variant]["external_data"] for variant in ("unfolded", "folded")] == [[], []]
    ran = cli(tmp_path, "verify", "repo")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "repo: 2 of 2 entries pass verify"
    x = np.random.default_rng(2).normal(size=(3, 3, 8, 8)).astype(np.float32)
    for variant in ("folded", "unfolded"):  # the same weights, inline or external
        inline = run_directly(entry.parent / "inline", variant, x)
        np.testing.assert_array_equal(run_directly(entry, variant, x), inline)


def test_a_manifest_without_external_data_fields_still_reads(tmp_path: Path) -> None:
    """Entries written before `external_data` existed (all tensors inline) verify as they are."""
    spec = f"{ROOT / 'tests' / 'models' / 'external_nets.py'}:build"
    assert cli(tmp_path, "fold-and-export", "--model", spec, *SHAPE, "--out", "repo").returncode == 0
    path = tmp_path / "repo" / "external_nets" / "model.json"
    manifest = json.loads(path.read_text())
    for variant in manifest["variants"].values():
        del variant["external_data"]
    path.write_text(json.dumps(manifest))
    ran = cli(tmp_path, "verify", "repo/external_nets")
    assert ran.returncode == 0, ran.stderr
    assert "✓ SHA-256 of both variants and of their 0 external data file(s) matches model.json" in ran.stdout


def test_a_source_whose_external_data_is_missing_is_refused_in_one_line(tmp_path: Path) -> None:
    source, elsewhere = tmp_path / "source", tmp_path / "elsewhere"
    source.mkdir()
    elsewhere.mkdir()
    export_with_external_data(build(), source / "m.onnx")
    (source / "m.onnx.data").unlink()
    ran = cli(elsewhere, "fold-and-export", "--model", "../source/m.onnx", "--out", "repo")
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines()[-1] == (
        "bnfold fold-and-export: cannot load the external data of ../source/m.onnx (tensor 'conv.weight' is stored "
        "in ../source/m.onnx.data, which is not a regular file); keep the data files where the model names them, "
        "relative to the model file"
    )
    assert not (elsewhere / "repo").exists()


def test_an_external_data_model_takes_real_samples_and_new_names(tmp_path: Path) -> None:
    """The file path (tensors memory-mapped) with --calibration and --input-names/--output-names: the entry's
    graphs, model.json and calibration.npz carry the new names, both variants agree with PyTorch on the
    user's samples, and the entry verifies."""
    source = tmp_path / "source"
    source.mkdir()
    model = build(seed=5)
    export_with_external_data(model, source / "m.onnx")
    samples = np.random.default_rng(5).normal(size=(6, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "samples.npz", pixels=samples)
    ran = cli(
        tmp_path, "fold-and-export", "--model", "source/m.onnx", "--calibration", "samples.npz",
        "--input-names", "pixels", "--output-names", "scores", "--out", "repo",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    entry = tmp_path / "repo" / "m"
    manifest = json.loads((entry / "model.json").read_text())
    assert [spec["name"] for spec in manifest["inputs"]] == ["pixels"]
    assert [spec["name"] for spec in manifest["outputs"]] == ["scores"]
    with np.load(entry / "calibration.npz") as calibration:
        assert calibration.files == ["pixels"] and np.array_equal(calibration["pixels"], samples)
    with torch.no_grad():
        expected = model(torch.from_numpy(samples)).numpy()
    for variant in ("unfolded", "folded"):
        graph = onnx.load(str(entry / f"{variant}.onnx"), load_external_data=False)
        assert ([v.name for v in graph.graph.input], [v.name for v in graph.graph.output]) == (["pixels"], ["scores"])
        session = ort.InferenceSession(str(entry / f"{variant}.onnx"), providers=["CPUExecutionProvider"])
        (got,) = session.run(["scores"], {"pixels": samples})
        assert np.max(np.abs(got - expected)) <= 1e-5 * max(1.0, float(np.max(np.abs(expected))))
    assert (count_op(onnx.load(str(entry / "unfolded.onnx"))), count_op(onnx.load(str(entry / "folded.onnx")))) == (
        1,
        0,
    )
    assert cli(tmp_path, "verify", entry).returncode == 0
