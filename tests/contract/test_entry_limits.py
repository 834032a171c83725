"""The contract's file rules and calibration limits on real files: plain names only, regular files only
(a FIFO is refused without blocking), calibration sizes read from the .npy headers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bnfold.contract.calibration import read_calibration
from bnfold.contract.entry_files import entry_file, read_regular
from bnfold.contract.errors import ContractError
from bnfold.contract.manifest import TensorSpec
from bnfold.contract.npz_limits import CalibrationLimits

INPUTS = [TensorSpec(name="input", datatype="FP32", shape=(-1, 3))]


@pytest.mark.parametrize("name", ["/etc/passwd", "../x.onnx", "a/b.onnx", "..", ".", ""])
def test_only_plain_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ContractError) as refused:
        entry_file(tmp_path, name, "folded variant")
    assert str(refused.value) == (
        f"model.json names folded variant file {name!r}: an entry may only use regular files inside its own "
        "directory, named without a path; rebuild the entry"
    )
    assert entry_file(tmp_path, "folded.onnx", "folded variant") == tmp_path / "folded.onnx"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.json")
    with pytest.raises(ContractError, match=r"^manifest file model\.json is a FIFO \(named pipe\): "):
        read_regular(tmp_path / "model.json", "manifest")
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    with pytest.raises(ContractError, match=r"^manifest file link\.json is a symbolic link: "):
        read_regular(tmp_path / "link.json", "manifest")
    assert read_regular(tmp_path / "real.json", "manifest") == b"{}"


def test_calibration_limits_by_samples_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "calibration.npz"
    np.savez_compressed(path, input=np.zeros((10, 3), np.float32))
    assert read_calibration(path, INPUTS, CalibrationLimits(max_samples=10, max_bytes=120))["input"].shape == (10, 3)
    with pytest.raises(ContractError) as refused:
        read_calibration(path, INPUTS, CalibrationLimits(max_samples=9, max_bytes=120))
    assert str(refused.value) == (
        "calibration file calibration.npz: array 'input.npy' declares 10 samples, over the limit of 9; rebuild "
        "the entry with a smaller calibration batch or raise BNFOLD_MAX_CALIBRATION_SAMPLES"
    )
    with pytest.raises(ContractError) as refused:
        read_calibration(path, INPUTS, CalibrationLimits(max_samples=10, max_bytes=119))
    assert str(refused.value) == (
        "calibration file calibration.npz declares 120 bytes of arrays, over the limit of 119; rebuild the entry "
        "with a smaller calibration batch or raise BNFOLD_MAX_CALIBRATION_BYTES"
    )
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ContractError, match=r"^calibration file calibration\.npz cannot be read \(File is not a zip"):
        read_calibration(path, INPUTS)
