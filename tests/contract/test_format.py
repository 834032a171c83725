"""The repository format of the contract: entry names, the datatype map, digests, model.json and calibration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnfold.contract.calibration import read_calibration, shape_matches
from bnfold.contract.datatypes import V2_TO_NUMPY, numpy_dtype, v2_name
from bnfold.contract.errors import ContractError
from bnfold.contract.hashing import sha256_bytes, sha256_file
from bnfold.contract.layout import FORMAT, check_name, is_valid_name
from bnfold.contract.manifest import Manifest, TensorSpec, parse_manifest


@pytest.mark.parametrize("name", ["a", "digits_resnet", "A.b-c_1", "9" * 64])
def test_names_the_format_allows(name: str) -> None:
    assert is_valid_name(name)
    check_name(name)


@pytest.mark.parametrize("name", ["", "nl\n", "nl\r", "\nnl", "-lead", ".hidden", "a/b", "../up", "sp ace", "9" * 65])
def test_names_the_format_forbids(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(ContractError, match="is not allowed; use 1–64 letters"):
        check_name(name)


def test_one_datatype_map() -> None:
    assert len(V2_TO_NUMPY) == 12
    assert numpy_dtype("FP32") == np.float32 and numpy_dtype("BOOL") == np.bool_
    assert v2_name(np.dtype(">f4")) == "FP32" and v2_name(np.int64) == "INT64" and v2_name(np.uint8) == "UINT8"
    assert all(v2_name(dtype) == name for name, dtype in V2_TO_NUMPY.items())
    with pytest.raises(ContractError, match="unsupported datatype 'BYTES'"):
        numpy_dtype("BYTES")
    with pytest.raises(ContractError, match="dtype complex64 has no Open Inference Protocol datatype"):
        v2_name(np.complex64)


def test_sha256_is_streamed_and_equals_hashlib(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # more than one block
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == sha256_bytes(data) == hashlib.sha256(data).hexdigest()


def manifest_document(name: str = "entry") -> dict[str, Any]:
    variant = {"sha256": "ab" * 32, "batchnorm_nodes": 2, "external_data": [{"file": "x.data", "sha256": "cd" * 32}]}
    return {
        "format": FORMAT,
        "name": name,
        "task": "classification",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "variants": {"unfolded": {"file": "unfolded.onnx", **variant}, "folded": {"file": "folded.onnx", **variant}},
        "tolerance": {"atol": 1e-6, "rtol": 1e-5},
        "calibration": {"file": "calibration.npz", "batch_size": 4},
        "fold_report": {"entries": []},
        "provenance": {"source": "zoo:x"},
        "metrics": {},
        "notes": ["a note"],
        "extra_field": {"kept": True},
    }


def test_manifest_round_trips_in_field_order() -> None:
    document = manifest_document()
    manifest = parse_manifest(json.dumps(document), "entry")
    assert manifest.to_json() == document
    assert list(manifest.to_json()) == list(document)
    assert Manifest.model_validate(document).inputs[0] == TensorSpec(name="input", datatype="FP32", shape=(-1, 1, 8, 8))


def test_a_manifest_written_before_external_data_existed_reads_with_none() -> None:
    document = manifest_document()
    for variant in document["variants"].values():
        del variant["external_data"]
    manifest = parse_manifest(json.dumps(document), "entry")
    assert [manifest.variants[variant].external_data for variant in ("unfolded", "folded")] == [[], []]
    assert manifest.to_json()["variants"]["folded"] == {
        "file": "folded.onnx", "sha256": "ab" * 32, "batchnorm_nodes": 2, "external_data": []}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [({"format": "other/2"}, "model.json format is 'other/2', expected 'bnfold-repository/1'"),
     ({"name": "else"}, "model.json name 'else' differs from its directory 'entry'"),
     ({"task": "poetry"}, "model.json is invalid at task: "),
     ({"inputs": [{"name": "x", "datatype": "FP8", "shape": [-1]}]}, "model.json is invalid at inputs.0.datatype: "),
     ({"variants": {"folded": {"file": "f", "sha256": "0", "batchnorm_nodes": 0}}}, "has no variant 'unfolded'"),
     ({"outputs": []}, "declares no inputs or no outputs")],
    ids=["format", "name", "task", "datatype", "variant", "no_outputs"],
)  # fmt: skip
def test_manifest_refusals(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError, match=message.replace("(", r"\(")):
        parse_manifest(json.dumps({**manifest_document(), **change}), "entry")


def test_manifest_that_is_not_json_or_not_an_object() -> None:
    with pytest.raises(ContractError, match=r"model.json is not valid JSON \("):
        parse_manifest(b"{", "entry")
    with pytest.raises(ContractError, match=r"model\.json holds a list, not an object"):
        parse_manifest(b"[]", "entry")


INPUTS = [TensorSpec(name="input", datatype="FP32", shape=(-1, 3))]


def test_calibration_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "calibration.npz"
    np.savez(path, input=np.arange(6, dtype=np.float32).reshape(2, 3), unused=np.zeros(1))
    arrays = read_calibration(path, INPUTS)
    assert list(arrays) == ["input"]
    np.testing.assert_array_equal(arrays["input"], np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [({"other": np.zeros((2, 3), np.float32)}, "calibration has no array for input 'input' (it has ['other'])"),
     ({"input": np.zeros((2, 3), np.float64)}, "calibration input 'input' is float64, model.json says FP32"),
     ({"input": np.zeros((2, 4), np.float32)}, "calibration input 'input' has shape [2, 4], expected [-1, 3]")],
    ids=["missing", "dtype", "shape"],
)  # fmt: skip
def test_calibration_refusals(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "calibration.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(ContractError) as refused:
        read_calibration(path, INPUTS)
    assert str(refused.value) == message


def test_calibration_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "calibration.npz"
    np.savez(path, input=np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ContractError, match=r"calibration file calibration\.npz cannot be read .*allow_pickle"):
        read_calibration(path, INPUTS)
    with pytest.raises(ContractError, match=r"calibration file missing\.npz is missing"):
        read_calibration(tmp_path / "missing.npz", INPUTS)


def test_shape_matches() -> None:
    assert shape_matches((4, 3), (-1, 3)) and shape_matches((4, 3), (4, 3))
    assert not shape_matches((4, 3), (-1, 2)) and not shape_matches((4, 3, 1), (-1, 3))
