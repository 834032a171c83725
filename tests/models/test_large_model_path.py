"""A model with external data takes the file path (folding/onnx_files.py) through fold-and-export, verify and the
service: checked by path, its tensors memory-mapped, never held or serialised as one protobuf message.

The model is bench/large_model_graph.py's (Conv-BN, Conv-BN, Gemm-BN, Gemm; random BatchNorm statistics, weights
streamed into m.onnx.data) at a small size: 3.3 MB of weights instead of 2.2 GB. The tests run in process, from a
working directory other than the model's.

Past 2 GiB a whole-model ModelProto.SerializeToString fails (onnx's checker and shape inference serialise their
argument, so does an onnxruntime session built from bytes), and a whole-model copy costs the model's size again.
At 3.3 MB neither fault can happen for real, so `budgeted` wraps ModelProto.SerializeToString and
ModelProto.CopyFrom to raise once a message exceeds BUDGET (256 KiB, smaller than the model's weights and than its
largest tensor, larger than its graph): a step that would hold the whole model as one message fails the test. The
control test shows the wrapper bites: the in-memory path, on the same model with its data loaded, trips it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from bench.large_model_graph import DATA_FILE, MODEL_FILE, Shape, build
from bnfold.contract.op_count import count_op
from bnfold.folding.errors import FoldingError
from bnfold.folding.onnx_files import by_file
from bnfold.folding.onnx_fold import fold_onnx, fold_onnx_file
from bnfold.models.errors import BadInputError
from bnfold.models.export.entry_check import verify_entry
from bnfold.models.export.fold_and_export import fold_and_export
from bnfold.service.settings import Settings
from tests.models.external_nets import assert_self_contained
from tests.service.oracle import json_request
from tests.service.server import running_server

SMALL = Shape(hidden=48)  # fc.weight 48 × 16,384 float32 = 3.1 MB; all weights 3.3 MB
BUDGET = 256 * 1024


class OverBudget(BaseException):
    """A whole-model message: what the file path must never build (a BaseException, so that no handler of the
    code under test turns it into one of its own errors)."""


@contextmanager
def budgeted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """ModelProto.SerializeToString and .CopyFrom raise OverBudget above BUDGET bytes; yields the sizes seen."""
    seen: list[int] = []
    serialize, copy = onnx.ModelProto.SerializeToString, onnx.ModelProto.CopyFrom

    def bounded_serialize(self: onnx.ModelProto, **options: Any) -> bytes:
        data = serialize(self, **options)
        seen.append(len(data))
        if len(data) > BUDGET:
            raise OverBudget(f"a {len(data)}-byte ModelProto was serialised")
        return data

    def bounded_copy(self: onnx.ModelProto, other: onnx.ModelProto) -> None:
        seen.append(other.ByteSize())
        if other.ByteSize() > BUDGET:
            raise OverBudget(f"a {other.ByteSize()}-byte ModelProto was copied")
        copy(self, other)

    with monkeypatch.context() as patch:
        patch.setattr(onnx.ModelProto, "SerializeToString", bounded_serialize)
        patch.setattr(onnx.ModelProto, "CopyFrom", bounded_copy)
        yield seen


@contextmanager
def checker_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[type]]:
    """Records the type of the first argument of every onnx.checker.check_model call (a path or a proto)."""
    calls: list[type] = []
    check = onnx.checker.check_model

    def recorded(model: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(type(model))
        check(model, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(onnx.checker, "check_model", recorded)
        yield calls


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SRC/m.onnx + SRC/m.onnx.data, written by the benchmark's builder."""
    built = build(tmp_path_factory.mktemp("large") / "src", SMALL)
    assert built.data_bytes > 10 * BUDGET
    return built.path


def reference(model: Path, x: NDArray[np.float32]) -> NDArray[np.float64]:
    """The source model computed by PyTorch in float64 from its weights (onnx.load resolves the data file):
    conv, batch_norm (inference), relu, flatten, linear, as the graph says; independent of bnfold and onnxruntime."""
    weights = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).astype(np.float64))
               for t in onnx.load(str(model)).graph.initializer}  # fmt: skip

    def bn(value: torch.Tensor, name: str) -> torch.Tensor:
        w = weights
        return F.batch_norm(value, w[f"{name}.mean"], w[f"{name}.var"], w[f"{name}.scale"], w[f"{name}.bias"],
                            training=False, eps=1e-5)  # fmt: skip

    h = torch.from_numpy(x.astype(np.float64))
    h = torch.relu(bn(F.conv2d(h, weights["conv1.weight"], weights["conv1.bias"], padding=1), "bn1"))
    h = torch.relu(bn(F.conv2d(h, weights["conv2.weight"], padding=1), "bn2"))
    h = torch.relu(bn(F.linear(h.flatten(1), weights["fc.weight"], weights["fc.bias"]), "bn3"))
    return (h @ weights["head.weight"] + weights["head.bias"]).numpy()


@pytest.fixture(scope="module")
def repository(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """fold-and-export of the source, run from another directory with the budget and the checker recorded;
    (the repository, what was seen)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        elsewhere = tmp_path_factory.mktemp("elsewhere")
        monkeypatch.chdir(elsewhere)
        relative = Path(os.path.relpath(source, elsewhere))
        with budgeted(monkeypatch) as sizes, checker_calls(monkeypatch) as checks:
            summary = fold_and_export(str(relative), out=Path("repo"))
        yield elsewhere / "repo", {"summary": summary, "sizes": sizes, "checks": checks}


def test_fold_and_export_never_builds_the_whole_model_and_checks_by_path(repository: Any) -> None:
    repo, seen = repository
    summary = seen["summary"]
    assert summary.path == Path("repo") / "m" and (repo / "m").is_dir()
    assert summary.batchnorm_nodes == {"unfolded": 3, "folded": 0}
    assert summary.fold_summary == "3/3 BatchNorm folded, 0 lowered, 0 kept"
    assert summary.max_abs_error["folded"] <= 1e-5
    assert seen["sizes"] and max(seen["sizes"]) <= BUDGET  # messages were built: graphs only, never the weights
    assert seen["checks"] and set(seen["checks"]) == {str}  # input, and both written variants, by path


def test_the_entry_holds_its_data_files_each_hashed(repository: Any, source: Path) -> None:
    entry = repository[0] / "m"
    manifest = assert_self_contained(entry)
    assert (entry / "unfolded.onnx.data").stat().st_size == (source.parent / DATA_FILE).stat().st_size
    graphs = {variant: onnx.load(str(entry / f"{variant}.onnx"), load_external_data=False) for variant in
              ("unfolded", "folded")}  # fmt: skip
    assert (count_op(graphs["unfolded"]), count_op(graphs["folded"])) == (3, 0)
    assert [m["variants"][v]["batchnorm_nodes"] for m in [manifest] for v in ("unfolded", "folded")] == [3, 0]


def test_verify_runs_by_path_within_the_budget(repository: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = repository[0] / "m"
    with budgeted(monkeypatch) as sizes, checker_calls(monkeypatch) as checks:
        result = verify_entry(entry)
    assert result.passed[-1].startswith("folded matches unfolded: max |Δ| = ")
    assert result.max_abs_error <= 1e-5
    assert checks == [str, str]
    assert max(sizes, default=0) <= BUDGET


def test_served_within_the_budget_answers_as_the_reference(
    repository: Any, source: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(4).normal(size=(3, 3, 16, 16)).astype(np.float32)
    expected = reference(source, x)
    with budgeted(monkeypatch), running_server(Settings(repository=repository[0])) as server:
        for variant in ("folded", "unfolded"):
            response = server.client.post(f"/v2/models/m/versions/{variant}/infer", json=json_request(x))
            assert response.status_code == 200, response.text
            got = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float64).reshape(3, SMALL.classes)
            assert np.max(np.abs(got - expected)) <= 1e-5 * max(1.0, float(np.max(np.abs(expected))))


def test_the_in_memory_path_would_build_the_whole_model(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same model with its data loaded is small and inline, so fold_onnx folds it in memory,
    which copies and serialises the whole model, and the budget says so."""
    loaded = onnx.load(str(source))
    assert not by_file(loaded)
    assert by_file(onnx.load(str(source), load_external_data=False))
    with budgeted(monkeypatch), pytest.raises(OverBudget, match="-byte ModelProto was"):
        fold_onnx(loaded)


def test_both_entries_fold_to_the_same_numbers(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fold_onnx on the loaded model (in memory), fold_onnx_file on the file, and fold_onnx on a proto holding
    external references (through files, resolved from the working directory as onnx does) give the same
    folded weights, bit for bit, and the same report."""
    x = {"input": np.random.default_rng(9).normal(size=(2, 3, 16, 16)).astype(np.float32)}
    in_memory = fold_onnx(onnx.load(str(source)), x)
    with budgeted(monkeypatch):
        from_file = fold_onnx_file(source, x)
        monkeypatch.chdir(source.parent)
        through_files = fold_onnx(onnx.load(MODEL_FILE, load_external_data=False), x)
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in in_memory.model.graph.initializer}
    assert sorted(expected) == [  # every BatchNorm parameter is gone; conv2 has a bias now
        "conv1.bias", "conv1.weight", "conv2.weight", "conv2.weight_bias", "fc.bias", "fc.weight", "head.bias",
        "head.weight",
    ]  # fmt: skip
    for folded in (
        {name: value.const_value.numpy() for name, value in from_file.model.graph.initializers.items()},
        {t.name: onnx.numpy_helper.to_array(t) for t in through_files.model.graph.initializer},
    ):
        assert folded.keys() == expected.keys()
        for name, array in expected.items():
            np.testing.assert_array_equal(folded[name], array, err_msg=name)
    assert from_file.report.to_json() == in_memory.report.to_json() == through_files.report.to_json()
    assert count_op(through_files.model) == 0


def test_a_file_fold_is_saved_with_its_data_and_checked(source: Path, tmp_path: Path) -> None:
    result = fold_onnx_file(source)
    assert result.save(tmp_path / "folded.onnx") == tmp_path / "folded.onnx.data"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folded.onnx", "folded.onnx.data"]
    written = onnx.load(str(tmp_path / "folded.onnx"), load_external_data=False)
    assert count_op(written) == 0
    external = {t.name for t in written.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert external == {"conv1.weight", "conv2.weight", "fc.weight", "head.weight"}  # the biases: under 1 KiB


def test_onnxruntime_is_given_the_mapped_weights(source: Path) -> None:
    """The measured run reads the weights where they are: the array onnxruntime gets for fc.weight is the memory
    map of the source's data file (no copy), and its outputs are, bit for bit, those of a session on the file
    itself with the same settings (no graph optimisation, no weight pre-packing)."""
    from bnfold.folding.onnx_files import large_initializers, light_proto, load_lazy, ort_initializers
    from bnfold.folding.onnx_measure import run_all_optimisations_off

    model = load_lazy(onnx.load(str(source), load_external_data=False), source.parent)
    mapped = model.graph.initializers["fc.weight"].const_value
    assert mapped is not None
    proto = light_proto(model)
    _, arrays = ort_initializers(model, proto)
    assert set(large_initializers(model)) >= {"fc.weight", "conv2.weight", "head.weight"}
    assert any(np.shares_memory(array, mapped.numpy()) for array in arrays)
    assert all(not t.raw_data for t in proto.graph.initializer if t.name in large_initializers(model))
    x = np.random.default_rng(3).normal(size=(2, 3, 16, 16)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    direct = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_array_equal(run_all_optimisations_off(model, {"input": x})["logits"], direct[0])


def _truncated(source: Path) -> tuple[Callable[[Path], None], str]:
    def damage(directory: Path) -> None:
        data = directory / DATA_FILE
        with data.open("r+b") as stream:
            stream.truncate(data.stat().st_size - 4)

    size = (source.parent / DATA_FILE).stat().st_size  # head.weight (48 × 10 float32) is the last tensor in it
    return damage, (
        f"tensor 'head.weight' needs bytes {size - 1920}…{size} of {{dir}}/m.onnx.data, which has {size - 4}: the "
        "data file is truncated or not this model's"
    )


def _hard_linked(source: Path) -> tuple[Callable[[Path], None], str]:
    return (lambda directory: os.link(directory / DATA_FILE, directory / "copy.data")), (
        "tensor 'conv1.weight' is stored in {dir}/m.onnx.data, which has 2 hard links (onnx_ir maps only files with "
        "one); copy the file"
    )


def _outside(source: Path) -> tuple[Callable[[Path], None], str]:
    def relocate(directory: Path) -> None:
        shutil.copy(directory / DATA_FILE, directory.parent / "outside.data")
        model = onnx.load(str(directory / MODEL_FILE), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../outside.data"
        onnx.save(model, str(directory / MODEL_FILE))

    return relocate, "tensor 'conv1.weight' is stored in '../outside.data', outside the model's directory"


@pytest.mark.parametrize("case", [_truncated, _hard_linked, _outside], ids=["truncated", "hard-linked", "outside"])
def test_source_data_that_cannot_be_mapped_is_refused_in_one_line(
    case: Callable[[Path], tuple[Callable[[Path], None], str]], source: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "src"
    shutil.copytree(source.parent, directory)
    damage, reason = case(source)
    damage(directory)
    path = directory / MODEL_FILE
    expected = (
        f"cannot load the external data of {path} ({reason.format(dir=directory)}); keep the data files where the "
        "model names them, relative to the model file"
    )
    with pytest.raises(BadInputError) as refused:
        fold_and_export(str(path), out=tmp_path / "repo")
    assert str(refused.value) == expected
    with pytest.raises(FoldingError) as folding:
        fold_onnx_file(path)
    assert str(folding.value) == expected
    assert not (tmp_path / "repo").exists()
