""".onnx SPECs with --calibration, --input-names and --output-names: two-input graphs (one reading int64 token
ids), exported from PyTorch with their BatchNormalization nodes kept, through the real CLI, onnxruntime and a
real server; the reference is the PyTorch module the graph was exported from."""

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
from bnfold.service.settings import Settings
from tests.models import multi_input_nets, tiny_nets
from tests.models.cli_helpers import bnfold, repository_contents
from tests.models.multi_input_nets import feature_samples, id_samples, image_samples
from tests.service.server import running_server

PREFIX = "bnfold fold-and-export: "


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two-input graph (image, features → scores), the image-and-token-ids graph (image, ids → scores) and
    the one-input tiny net (input → output), each an .onnx file keeping its BatchNormalization nodes."""
    directory = tmp_path_factory.mktemp("graphs")
    two = multi_input_nets.export_file(
        multi_input_nets.build_two_inputs(), directory / "two.onnx", ["image", "features"], ["scores"]
    )
    tokens = multi_input_nets.export_file(
        multi_input_nets.build_image_and_tokens(), directory / "tokens.onnx", ["image", "ids"], ["scores"]
    )
    one = multi_input_nets.export_file(
        tiny_nets.build(), directory / "one.onnx", ["input"], ["output"], (torch.randn(2, 3, 8, 8),)
    )
    assert [count_op(onnx.load(str(path))) for path in (two, tokens, one)] == [2, 1, 1]  # the exporter kept every BN
    return {"two": two, "tokens": tokens, "one": one}


def _io_names(path: Path) -> tuple[list[str], list[str]]:
    graph = onnx.load(str(path)).graph
    return [value.name for value in graph.input], [value.name for value in graph.output]


def _reference(model: nn.Module, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(array) for array in arrays)).numpy()


def _assert_variants_match(entry: Path, feeds: dict[str, np.ndarray], expected: np.ndarray, output: str) -> None:
    """Both variants, run by onnxruntime, give the PyTorch module's outputs within the float32 tolerance."""
    bound = 1e-6 + 1e-5 * float(np.max(np.abs(expected)))
    for variant in ("unfolded", "folded"):
        session = ort.InferenceSession(str(entry / f"{variant}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run([output], feeds)[0]
        assert float(np.max(np.abs(got - expected))) <= bound, variant


def test_two_input_graph_calibrates_on_the_first_64_samples_of_each_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, graphs: dict[str, Path]
) -> None:
    image, features = image_samples(70, seed=1), feature_samples(70, seed=2)
    calibration = tmp_path / "samples.npz"
    np.savez(calibration, features=features, image=image)  # key order differs from the graph's input order
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", graphs["two"], "--calibration", calibration,
                 "--name", "two", "--out", repository, "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert f"note: --calibration {calibration} holds 70 samples; using the first 64" in ran.err.splitlines()
    assert ran.json()["batchnorm_nodes"] == {"unfolded": 2, "folded": 0}
    entry = repository / "two"
    assert tuple(count_op(onnx.load(str(entry / f"{v}.onnx"))) for v in ("unfolded", "folded")) == (
        2,
        0,
    )
    with np.load(entry / "calibration.npz", allow_pickle=False) as stored:
        assert stored.files == ["image", "features"]
        for name, given in (("image", image), ("features", features)):
            assert stored[name].dtype == given.dtype and stored[name].tobytes() == given[:64].tobytes(), name
    manifest = json.loads((entry / "model.json").read_text())
    assert manifest["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, 8, 8]},
        {"name": "features", "datatype": "FP32", "shape": [-1, 5]},
    ]
    assert manifest["calibration"]["batch_size"] == 64
    expected = _reference(multi_input_nets.build_two_inputs(), image[:64], features[:64])
    _assert_variants_match(entry, {"image": image[:64], "features": features[:64]}, expected, "scores")


def test_int64_token_ids_need_real_samples(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, graphs: dict[str, Path]
) -> None:
    refused = bnfold(capsys, "fold-and-export", "--model", graphs["tokens"], "--out", tmp_path / "refused")
    assert (refused.code, refused.err.strip()) == (1, PREFIX + "input 'ids' is int64, and seeded random samples "
            "stand in only for float32/float64 inputs; pass --calibration FILE with real samples of every "
            "input")  # fmt: skip
    assert repository_contents(tmp_path / "refused") == []
    image, ids = image_samples(12, seed=3), id_samples(12, seed=4)
    calibration = tmp_path / "samples.npz"
    np.savez(calibration, image=image, ids=ids.astype(np.int32))  # int32 ids fit the int64 input: cast
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", graphs["tokens"], "--calibration", calibration,
                 "--name", "tokens", "--out", repository, "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert "note:" not in ran.err
    assert ran.json()["batchnorm_nodes"] == {"unfolded": 1, "folded": 0}
    entry = repository / "tokens"
    with np.load(entry / "calibration.npz", allow_pickle=False) as stored:
        assert stored["ids"].dtype == np.int64 and np.array_equal(stored["ids"], ids)
        assert stored["image"].tobytes() == image.tobytes()
    manifest = json.loads((entry / "model.json").read_text())
    assert [(spec["name"], spec["datatype"]) for spec in manifest["inputs"]] == [("image", "FP32"), ("ids", "INT64")]
    expected = _reference(multi_input_nets.build_image_and_tokens(), image, ids)
    _assert_variants_match(entry, {"image": image, "ids": ids}, expected, "scores")


def test_renamed_inputs_and_outputs_reach_both_graphs_the_metadata_and_the_server(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, graphs: dict[str, Path]
) -> None:
    image, ids = image_samples(16, seed=5), id_samples(16, seed=6)
    calibration = tmp_path / "samples.npz"
    np.savez(calibration, pixels=image, tokens=ids)  # keyed by the NEW names
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", graphs["tokens"], "--calibration", calibration,
                 "--input-names", "pixels,tokens", "--output-names", "logits", "--name", "renamed",
                 "--out", repository)  # fmt: skip
    assert ran.code == 0, ran.err
    entry = repository / "renamed"
    for variant in ("unfolded", "folded"):
        assert _io_names(entry / f"{variant}.onnx") == (["pixels", "tokens"], ["logits"]), variant
    assert tuple(count_op(onnx.load(str(entry / f"{v}.onnx"))) for v in ("unfolded", "folded")) == (
        1,
        0,
    )
    with np.load(entry / "calibration.npz", allow_pickle=False) as stored:
        assert stored.files == ["pixels", "tokens"]
    verified = bnfold(capsys, "verify", entry)
    assert verified.code == 0, verified.err
    model = multi_input_nets.build_image_and_tokens()
    _assert_variants_match(entry, {"pixels": image, "tokens": ids}, _reference(model, image, ids), "logits")
    with running_server(Settings(repository=repository)) as server:
        metadata = server.client.get("/v2/models/renamed").json()
        assert metadata["inputs"] == [
            {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 8, 8]},
            {"name": "tokens", "datatype": "INT64", "shape": [-1, 6]},
        ]
        assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}]
        x, t = image_samples(3, seed=7), id_samples(3, seed=8)
        body = {"inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": [3, 3, 8, 8], "data": x.ravel().tolist()},
            {"name": "tokens", "datatype": "INT64", "shape": [3, 6], "data": t.ravel().tolist()},
        ]}  # fmt: skip
        answer = server.client.post("/v2/models/renamed/infer", json=body)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert output["name"] == "logits" and output["shape"] == [3, 2]
        wanted = _reference(model, x, t).ravel()
        assert float(np.max(np.abs(np.array(output["data"]) - wanted))) <= 1e-6 + 1e-5 * float(np.max(np.abs(wanted)))


def test_a_one_input_graph_takes_one_array_under_any_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, graphs: dict[str, Path]
) -> None:
    samples = np.random.default_rng(9).uniform(-2, 2, size=(10, 3, 8, 8))  # float64 for a float32 input: cast
    calibration = tmp_path / "samples.npz"
    np.savez(calibration, whatever=samples)
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", graphs["one"], "--calibration", calibration,
                 "--input-names", "pixels", "--name", "one", "--out", repository)  # fmt: skip
    assert ran.code == 0, ran.err
    assert "note:" not in ran.err
    with np.load(repository / "one" / "calibration.npz", allow_pickle=False) as stored:
        assert stored.files == ["pixels"]
        assert stored["pixels"].dtype == np.float32
        assert stored["pixels"].tobytes() == samples.astype(np.float32).tobytes()
    expected = _reference(tiny_nets.build(), samples.astype(np.float32))
    _assert_variants_match(repository / "one", {"pixels": samples.astype(np.float32)}, expected, "output")


def _save(path: Path, **arrays: np.ndarray) -> Path:
    if path.suffix == ".npy":
        np.save(path, arrays["array"])
    else:
        np.savez(path, **arrays)
    return path


UNUSABLE_SAMPLES = [
    ("two", "x.npz", {"image": image_samples(4, 1)},
     "--calibration {path} has no array for input(s) features (it holds image); save one array per input, keyed by "
     "the input names image, features"),
    ("two", "x.npz", {"image": image_samples(4, 1), "features": feature_samples(4, 2), "labels": np.zeros(4)},
     "--calibration {path} holds array(s) labels for no input of the model; save one array per input, keyed by the "
     "input names image, features"),
    ("two", "x.npy", {"array": image_samples(4, 1)},
     "--calibration {path} is a single array, but the model takes 2 inputs (image, features): save a .npz with one "
     "array per input, keyed by the input names"),
    ("tokens", "x.npz", {"image": image_samples(4, 1), "ids": id_samples(4, 2).astype(np.float32)},
     "--calibration {path} array 'ids' has dtype float32; input 'ids' is int64: save integer samples"),
    ("tokens", "x.npz", {"image": image_samples(4, 1).astype(np.int64), "ids": id_samples(4, 2)},
     "--calibration {path} array 'image' has dtype int64; input 'image' is float32: save float samples"),
    ("two", "x.npz", {"image": image_samples(4, 1), "features": feature_samples(4, 2)[:, :4]},
     "--calibration {path} array 'features' holds samples of shape (4,), but input 'features' takes (5,); save "
     "samples of the model's input shape (samples first)"),
    ("two", "x.npz", {"image": image_samples(4, 1)[:, 0], "features": feature_samples(4, 2)},
     "--calibration {path} array 'image' holds samples of shape (8, 8), but input 'image' takes (3, 8, 8); save "
     "samples of the model's input shape (samples first)"),
    ("two", "x.npz", {"image": image_samples(10, 1), "features": feature_samples(9, 2)},
     "--calibration {path} holds different numbers of samples per input (image 10, features 9); give every input "
     "the same number of samples (the leading axis)"),
    ("two", "x.npz", {"image": image_samples(0, 1), "features": feature_samples(0, 2)},
     "--calibration {path} array 'image' holds no samples; save an array of shape (samples, …)"),
    ("one", "x.npz", {"a": image_samples(4, 1), "b": image_samples(4, 2)},
     "--calibration {path} holds 2 arrays (a, b); the model takes one input: save one array"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("graph", "file", "arrays", "message"),
    UNUSABLE_SAMPLES,
    ids=["missing_key", "extra_key", "npy_for_two_inputs", "float_for_int", "int_for_float", "trailing_shape",
         "rank", "sample_counts", "no_samples", "two_arrays_for_one_input"],
)  # fmt: skip
def test_unusable_samples_are_refused(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    graphs: dict[str, Path],
    graph: str,
    file: str,
    arrays: dict[str, np.ndarray],
    message: str,
) -> None:
    path = _save(tmp_path / file, **arrays)
    ran = bnfold(capsys, "fold-and-export", "--model", graphs[graph], "--calibration", path,
                 "--out", tmp_path / "repo")  # fmt: skip
    assert (ran.code, ran.err.strip()) == (1, PREFIX + message.format(path=path))
    assert repository_contents(tmp_path / "repo") == []


def _an_initializer(path: Path) -> str:
    """A value name of the graph that is neither an input nor an output (a weight)."""
    return onnx.load(str(path)).graph.initializer[0].name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input-names", "a"], "--input-names gives 1 name(s); the graph takes 2 input(s) (image, features): "
         "give 2"),
        (["--output-names", "a,b"], "--output-names gives 2 name(s); the graph returns 1 output(s) (scores): give 1"),
        (["--input-names", "{weight},features"], "--input-names: '{weight}' already names another value of the "
         "graph; choose a name the graph does not use"),
        (["--output-names", "image"], "--output-names: 'image' already names another value of the graph; choose a "
         "name the graph does not use"),
        (["--input-names", "a,b", "--output-names", "b"], "the input and an output are both called 'b'; give them "
         "different names"),
        (["--calibration", "{samples}", "--input-shape", "1,3,8,8"], "--calibration gives the shapes of an ONNX "
         "graph's inputs; drop --input-shape"),
    ],
    ids=["input_count", "output_count", "name_of_a_weight", "name_of_an_input", "input_equals_output",
         "calibration_and_input_shape"],
)  # fmt: skip
def test_names_that_do_not_fit_the_graph(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, graphs: dict[str, Path], argv: list[str], message: str
) -> None:
    weight = _an_initializer(graphs["two"])
    samples = _save(tmp_path / "x.npz", image=image_samples(4, 1), features=feature_samples(4, 2))
    filled = [arg.format(weight=weight, samples=samples) for arg in argv]
    ran = bnfold(capsys, "fold-and-export", "--model", graphs["two"], *filled, "--out", tmp_path / "repo")
    assert (ran.code, ran.err.strip()) == (2, PREFIX + message.format(weight=weight))
    assert repository_contents(tmp_path / "repo") == []
