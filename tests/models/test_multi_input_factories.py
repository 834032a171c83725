"""Factories whose forward takes several tensors, calibrated on one array per parameter, through the real CLI
and onnxruntime; the reference is the factory's own module with the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bnfold.contract.op_count import count_op
from tests.models import multi_input_nets
from tests.models.cli_helpers import bnfold, repository_contents
from tests.models.multi_input_nets import feature_samples, id_samples, image_samples

NETS = "tests/models/multi_input_nets.py"
PREFIX = "bnfold fold-and-export: "


def _weights(tmp_path: Path, model: nn.Module) -> Path:
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return path


def _check_entry(entry: Path, model: nn.Module, feeds: dict[str, np.ndarray], output: str = "output") -> None:
    """BatchNormalization in unfolded.onnx only; both variants give the module's outputs on `feeds`."""
    assert tuple(count_op(onnx.load(str(entry / f"{v}.onnx"))) for v in ("unfolded", "folded")) == (
        sum(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules()),
        0,
    )
    with torch.no_grad():
        expected = model(*(torch.from_numpy(array) for array in feeds.values())).numpy()
    bound = 1e-6 + 1e-5 * float(np.max(np.abs(expected)))
    for variant in ("unfolded", "folded"):
        path = entry / f"{variant}.onnx"
        graph = onnx.load(str(path)).graph
        assert [value.name for value in graph.input] == list(feeds), variant
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run([output], feeds)[0]
        assert float(np.max(np.abs(got - expected))) <= bound, variant


def test_a_two_input_factory_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = multi_input_nets.build_two_inputs()
    image, features = image_samples(70, seed=1), feature_samples(70, seed=2)
    calibration = tmp_path / "samples.npz"
    np.savez(calibration, image=image, features=features)
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{NETS}:build_two_inputs", "--weights",
                 _weights(tmp_path, model), "--calibration", calibration, "--name", "two", "--out", repository,
                 "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert f"note: --calibration {calibration} holds 70 samples; using the first 64" in ran.err.splitlines()
    assert ran.json()["batchnorm_nodes"] == {"unfolded": 2, "folded": 0}
    assert ran.json()["reference"] == "PyTorch"
    entry = repository / "two"
    with np.load(entry / "calibration.npz", allow_pickle=False) as stored:
        assert stored.files == ["image", "features"]
        assert stored["image"].tobytes() == image[:64].tobytes()
        assert stored["features"].tobytes() == features[:64].tobytes()
    manifest = json.loads((entry / "model.json").read_text())
    assert [spec["name"] for spec in manifest["inputs"]] == ["image", "features"]
    _check_entry(entry, model, {"image": image[:64], "features": features[:64]})
    verified = bnfold(capsys, "verify", entry)
    assert verified.code == 0, verified.err


def test_token_ids_keep_their_dtype_and_input_names_key_the_samples(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = multi_input_nets.build_image_and_tokens()
    image, ids = image_samples(8, seed=3).astype(np.float64), id_samples(8, seed=4)
    calibration = tmp_path / "samples.npz"
    np.savez(calibration, tokens=ids, pixels=image)  # keyed by --input-names, which follow forward's order
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{NETS}:build_image_and_tokens", "--weights",
                 _weights(tmp_path, model), "--calibration", calibration, "--input-names", "pixels,tokens",
                 "--output-names", "logits", "--name", "tokens", "--out", repository)  # fmt: skip
    assert ran.code == 0, ran.err
    entry = repository / "tokens"
    manifest = json.loads((entry / "model.json").read_text())
    assert [(spec["name"], spec["datatype"]) for spec in manifest["inputs"]] == [("pixels", "FP32"),
                                                                                  ("tokens", "INT64")]  # fmt: skip
    assert [spec["name"] for spec in manifest["outputs"]] == ["logits"]
    with np.load(entry / "calibration.npz", allow_pickle=False) as stored:
        assert stored["tokens"].dtype == np.int64 and np.array_equal(stored["tokens"], ids)
        assert stored["pixels"].dtype == np.float32 and np.array_equal(stored["pixels"], image.astype(np.float32))
    _check_entry(entry, model, {"pixels": image.astype(np.float32), "tokens": ids}, output="logits")


def test_a_parameter_with_a_default_is_an_input_when_the_samples_name_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = multi_input_nets.build_optional_features()
    image, features = image_samples(6, seed=5), feature_samples(6, seed=6)
    calibration = tmp_path / "samples.npz"
    np.savez(calibration, image=image, features=features)
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{NETS}:build_optional_features", "--weights",
                 _weights(tmp_path, model), "--calibration", calibration, "--name", "optional",
                 "--out", repository)  # fmt: skip
    assert ran.code == 0, ran.err
    _check_entry(repository / "optional", model, {"image": image, "features": features})


@pytest.mark.parametrize(
    ("factory", "argv", "code", "message"),
    [
        ("build_two_inputs", ["--input-shape", "1,3,8,8"], 2, "{spec} takes 2 inputs (image, features); pass "
         "--calibration FILE.npz with one array per input, keyed image, features"),
        ("build_two_inputs", ["--calibration", "{npz}", "--input-names", "a,b,c"], 2, "--input-names gives 3 "
         "name(s); forward takes 2 inputs (image, features): give 2"),
        ("build_optional_features", ["--calibration", "{npz}", "--input-names", "a,b,c"], 2, "--input-names gives 3 "
         "name(s); forward takes 1 to 2 inputs (image, features): give 1 to 2"),
        ("build_two_inputs", ["--calibration", "{npz}", "--input-shape", "1,3,8,8"], 2, "--input-shape gives one "
         "input's shape, but {spec} takes 2 inputs; drop it: --calibration gives their shapes"),
        ("build_two_inputs", ["--calibration", "{npz}", "--input-names", "image,extra"], 1, "--calibration {npz} has "
         "no array for input(s) extra (it holds image, features); save one array per input, keyed by the input "
         "names image, extra"),
        ("build_two_inputs", ["--calibration", "{npy}"], 1, "--calibration {npy} is a single array, but the model "
         "takes 2 inputs (image, features): save a .npz with one array per input, keyed by the input names"),
        ("build_two_inputs", ["--calibration", "{wrong}"], 1, "the model rejects input shape image (4, 3, 8, 8), "
         "features (4, 4) (--calibration) (RuntimeError: "),
    ],
    ids=["no_calibration", "name_count", "name_count_with_a_default", "input_shape_too", "missing_key", "npy",
         "shape_forward_rejects"],
)  # fmt: skip
def test_what_a_several_input_factory_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, factory: str, argv: list[str], code: int, message: str
) -> None:
    paths = {
        "npz": tmp_path / "samples.npz",
        "npy": tmp_path / "samples.npy",
        "wrong": tmp_path / "wrong.npz",
    }
    np.savez(paths["npz"], image=image_samples(4, 1), features=feature_samples(4, 2))
    np.save(paths["npy"], image_samples(4, 1))
    np.savez(
        paths["wrong"],
        image=image_samples(4, 1),
        features=feature_samples(4, 2)[:, :4],
    )
    spec = f"{NETS}:{factory}"
    model = getattr(multi_input_nets, factory)()
    filled = [arg.format(**paths) for arg in argv]
    ran = bnfold(capsys, "fold-and-export", "--model", spec, "--weights", _weights(tmp_path, model), *filled,
                 "--out", tmp_path / "repo")  # fmt: skip
    assert ran.code == code
    assert ran.err.strip().startswith(PREFIX + message.format(spec=spec, **paths))
    if not message.endswith(": "):  # every message but the quoted library error is matched in full
        assert ran.err.strip() == PREFIX + message.format(spec=spec, **paths)
    assert repository_contents(tmp_path / "repo") == []
