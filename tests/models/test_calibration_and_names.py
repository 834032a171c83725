"""--calibration, --input-names, --output-names and dict outputs through the real CLI, onnxruntime and a real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from bnfold.service.settings import Settings
from tests.models import tiny_nets
from tests.models.cli_helpers import bnfold, repository_contents
from tests.service.server import running_server

TINY = "tests/models/tiny_nets.py"
PREFIX = "bnfold fold-and-export: "


class DictHead(nn.Module):
    """(N, 3, 8, 8) → {"logits": (N, 2), "features": (N, 4, 8, 8)}, a Hugging Face–style dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_nets.ConvBnHead()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = torch.relu(self.body.bn(self.body.conv(x)))
        return {"logits": self.body.head(features.mean(dim=(2, 3))), "features": features}


def build_dict_head() -> nn.Module:
    model = DictHead()
    tiny_nets.randomise_batchnorm(model, seed=5)
    return model.eval()


def _samples(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, size=(count, 3, 8, 8)).astype(np.float32)


def _weights(tmp_path: Path, model: nn.Module) -> Path:
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return path


def _graph_names(path: Path) -> tuple[list[str], list[str]]:
    graph = onnx.load(str(path)).graph
    return [value.name for value in graph.input], [value.name for value in graph.output]


def test_npy_calibration_is_cut_to_64_and_names_reach_graphs_and_metadata(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    reference = tiny_nets.build()
    calibration = tmp_path / "samples.npy"
    np.save(calibration, _samples(100))
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--weights", _weights(tmp_path, reference),
                 "--calibration", calibration, "--input-names", "pixels", "--output-names", "scores",
                 "--name", "tiny", "--out", repository)  # fmt: skip
    assert ran.code == 0, ran.err
    assert f"note: --calibration {calibration} holds 100 samples; using the first 64" in ran.err.splitlines()
    entry = repository / "tiny"
    with np.load(entry / "calibration.npz", allow_pickle=False) as stored:
        assert stored.files == ["pixels"]
        np.testing.assert_array_equal(stored["pixels"], _samples(100)[:64])
    with torch.no_grad():
        expected = reference(torch.from_numpy(_samples(100)[:64])).numpy()
    for variant in ("unfolded", "folded"):
        assert _graph_names(entry / f"{variant}.onnx") == (["pixels"], ["scores"])
        session = ort.InferenceSession(str(entry / f"{variant}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(["scores"], {"pixels": _samples(100)[:64]})[0]
        assert np.max(np.abs(got - expected)) <= 1e-6 + 1e-5 * np.max(np.abs(expected)), variant
    with running_server(Settings(repository=repository)) as server:
        metadata = server.client.get("/v2/models/tiny")
        assert metadata.status_code == 200
        assert metadata.json()["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
        assert metadata.json()["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 2]}]
        sample = _samples(3, seed=9)
        body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [3, 3, 8, 8],
                            "data": sample.ravel().tolist()}]}  # fmt: skip
        answer = server.client.post("/v2/models/tiny/infer", json=body)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert output["name"] == "scores" and output["shape"] == [3, 2]
        with torch.no_grad():
            wanted = reference(torch.from_numpy(sample)).numpy().ravel()
        assert np.max(np.abs(np.array(output["data"]) - wanted)) <= 1e-5


def test_npz_calibration_with_one_array(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    calibration = tmp_path / "samples.npz"
    np.savez(calibration, x=_samples(10).astype(np.float64))
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--weights",
                 _weights(tmp_path, tiny_nets.build()), "--calibration", calibration, "--name", "tiny",
                 "--out", repository)  # fmt: skip
    assert ran.code == 0, ran.err
    assert "note:" not in ran.err
    with np.load(repository / "tiny" / "calibration.npz", allow_pickle=False) as stored:
        assert stored["input"].dtype == np.float32 and stored["input"].shape == (10, 3, 8, 8)
        np.testing.assert_allclose(stored["input"], _samples(10), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("saved", "shape", "message"),
    [
        (_samples(4)[:, :, :6, :6], "1,3,8,8", "--calibration {path} holds samples of shape (3, 6, 6), but "
         "--input-shape gives (3, 8, 8); save samples of the model's input shape (samples first)"),
        (np.zeros((4, 3, 8, 8), dtype=np.int64), None, "--calibration {path} has dtype int64; the model's input is "
         "float32: save float samples"),
        (np.zeros((0, 3, 8, 8), dtype=np.float32), None, "--calibration {path} holds no samples; save an array of "
         "shape (samples, …)"),
    ],
    ids=["wrong_shape", "integer_dtype", "no_samples"],
)  # fmt: skip
def test_unusable_npy_calibration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved: np.ndarray, shape: str | None, message: str
) -> None:
    path = tmp_path / "samples.npy"
    np.save(path, saved)
    repository = tmp_path / "repo"
    extra = ["--input-shape", shape] if shape else []
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--weights",
                 _weights(tmp_path, tiny_nets.build()), "--calibration", path, *extra, "--out", repository)  # fmt: skip
    assert ran.code == 1
    assert ran.err.strip() == PREFIX + message.format(path=path)
    assert repository_contents(repository) == []


def test_calibration_the_model_rejects(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "samples.npy"
    np.save(path, np.zeros((4, 5, 8, 8), dtype=np.float32))
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--weights",
                 _weights(tmp_path, tiny_nets.build()), "--calibration", path, "--out", tmp_path / "repo")  # fmt: skip
    assert ran.code == 1
    assert ran.err.startswith(PREFIX + "the model rejects input shape (4, 5, 8, 8) (--calibration) (RuntimeError: ")


def test_npz_with_two_arrays_and_a_pickled_npy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    two = tmp_path / "two.npz"
    np.savez(two, a=_samples(2), b=_samples(2))
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    weights = _weights(tmp_path, tiny_nets.build())
    for path, message in [
        (two, f"--calibration {two} holds 2 arrays (a, b); the model takes one input: save one array"),
        (pickled, f"--calibration {pickled} is not a .npy or .npz file of numbers (ValueError); save it with "
         "numpy.save or numpy.savez"),
    ]:  # fmt: skip
        ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--weights", weights,
                     "--calibration", path, "--out", tmp_path / "repo")  # fmt: skip
        assert (ran.code, ran.err.strip()) == (1, PREFIX + message)


def test_dict_outputs_get_one_named_output_per_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    reference = build_dict_head()
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{__name__}:build_dict_head", "--weights",
                 _weights(tmp_path, reference), "--input-shape", "1,3,8,8", "--name", "dicty", "--out", repository,
                 "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.json()["batchnorm_nodes"] == {"unfolded": 1, "folded": 0}
    x = _samples(6, seed=4)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x))
    for variant in ("unfolded", "folded"):
        path = repository / "dicty" / f"{variant}.onnx"
        assert _graph_names(path) == (["input"], ["logits", "features"])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, got in zip(("logits", "features"), session.run(None, {"input": x}), strict=True):
            want = expected[name].numpy()
            assert np.max(np.abs(got - want)) <= 1e-6 + 1e-5 * np.max(np.abs(want)), (variant, name)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--output-names", "a"], "--output-names gives 1 name(s); the model returns 2 output(s) (logits, features)"),
     (["--input-names", "a,b"], "--input-names gives 2 names; the model takes 1 input: give 1"),
     (["--output-names", "a b,c"], "argument --output-names: 'a b' is not a valid tensor name; use 1–64 letters, "
      "digits, '_', '.', '-', starting with a letter or '_' (see bnfold fold-and-export --help)"),
     (["--output-names", "a,a"], "argument --output-names: --output-names 'a,a' repeats a name; give each tensor "
      "its own name (see bnfold fold-and-export --help)")],
    ids=["output_count", "input_count", "invalid_name", "repeated_name"],
)  # fmt: skip
def test_names_that_do_not_fit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    ran = bnfold(capsys, "fold-and-export", "--model", f"{__name__}:build_dict_head", "--weights",
                 _weights(tmp_path, build_dict_head()), "--input-shape", "1,3,8,8", *argv,
                 "--out", tmp_path / "repo")  # fmt: skip
    assert (ran.code, ran.err.strip()) == (2, PREFIX + message)
    assert repository_contents(tmp_path / "repo") == []
