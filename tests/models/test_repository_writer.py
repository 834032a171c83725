"""The repository writer is atomic and the reader refuses what the format forbids."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bnfold.models.errors import BadInputError, VerificationError
from bnfold.models.export.repository import FORMAT, read_manifest, write_entry


def complete_manifest(name: str) -> dict[str, object]:
    """A model.json with every field the contract's schema requires."""
    variant = {"sha256": "0" * 64, "batchnorm_nodes": 0}
    return {
        "format": FORMAT,
        "name": name,
        "task": "regression",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        "variants": {"unfolded": {"file": "unfolded.onnx", **variant}, "folded": {"file": "folded.onnx", **variant}},
        "tolerance": {"atol": 1e-6, "rtol": 1e-5},
        "calibration": {"file": "calibration.npz", "batch_size": 2},
    }


def test_failure_while_writing_leaves_nothing(tmp_path: Path) -> None:
    """np.savez refuses an object array (no pickles): the half-written temporary entry is removed."""
    calibration = {"input": np.array([{"a": 1}], dtype=object)}
    with pytest.raises(ValueError, match="allow_pickle"):
        write_entry(tmp_path, "half", {"format": FORMAT, "name": "half"}, {"unfolded.onnx": b"x"}, calibration)
    assert list(tmp_path.iterdir()) == []


def test_written_entry_is_complete_and_readable(tmp_path: Path) -> None:
    manifest = complete_manifest("whole")
    entry = write_entry(tmp_path, "whole", manifest, {"unfolded.onnx": b"u", "folded.onnx": b"f"},
                        {"input": np.zeros((2, 3), np.float32)})  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole"]
    assert sorted(p.name for p in entry.iterdir()) == ["calibration.npz", "folded.onnx", "model.json", "unfolded.onnx"]
    assert read_manifest(entry) == manifest
    with np.load(entry / "calibration.npz", allow_pickle=False) as archive:
        assert archive["input"].shape == (2, 3)
    with pytest.raises(BadInputError, match="already exists"):
        write_entry(tmp_path, "whole", manifest, {}, {})


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"format": "other/2", "name": "e"}', "format is 'other/2', expected 'bnfold-repository/1'"),
     (json.dumps(complete_manifest("x")), "name 'x' differs from its directory 'e'"),
     (json.dumps({**complete_manifest("e"), "task": "poetry"}), "is invalid at task: "),
     (json.dumps({**complete_manifest("e"), "variants": {}}), "has no variant 'folded'"),
     ("{", "is not valid JSON")],
    ids=["other_format", "name_mismatch", "bad_task", "no_variants", "bad_json"],
)  # fmt: skip
def test_reader_refusals(tmp_path: Path, content: str, message: str) -> None:
    entry = tmp_path / "e"
    entry.mkdir()
    (entry / "model.json").write_text(content)
    with pytest.raises(VerificationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(entry)


def test_files_and_directories_are_fsynced_around_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability: every file and the temporary directory are fsynced before the rename, the repository
    directory after it (and its parent, since the repository was created). os.fsync and os.rename are
    spied on — the real calls still run — to see which paths were synced and in what order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def rename(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        events.append(("rename", os.fspath(target)))
        real_rename(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    repository = tmp_path / "repo"
    files = {"unfolded.onnx": b"u", "folded.onnx": b"f"}
    manifest = {"format": FORMAT, "name": "durable"}
    entry = write_entry(repository, "durable", manifest, files, {"input": np.zeros((2, 3), np.float32)})
    renamed = events.index(("rename", str(entry)))
    before, after = {path for _, path in events[:renamed]}, [path for _, path in events[renamed + 1 :]]
    temporary = {Path(path).parent for path in before if Path(path).name == "model.json"}
    assert len(temporary) == 1 and temporary.pop().name.startswith(".durable.tmp-")
    synced_files = {Path(path).name for path in before if Path(path).parent.name.startswith(".durable.tmp-")}
    assert synced_files == {"unfolded.onnx", "folded.onnx", "calibration.npz", "model.json"}
    assert any(Path(path).name.startswith(".durable.tmp-") and Path(path).parent == repository for path in before)
    assert after == [str(repository), str(tmp_path)]
    assert (entry / "folded.onnx").read_bytes() == b"f"
