"""--weights through the real CLI: checkpoint layouts that load, and the exact message for each file that does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bnfold.models.export.fold_and_export import UNTRAINED_WARNING
from bnfold.models.export.weights import plain
from tests.models import tiny_nets
from tests.models.cli_helpers import bnfold, repository_contents

TINY = "tests/models/tiny_nets.py"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
PREFIX = "bnfold fold-and-export: "


def _export(capsys: pytest.CaptureFixture[str], weights: Path, repository: Path, *extra: str):  # type: ignore[no-untyped-def]
    return bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--weights", weights,
                  "--input-shape", "1,3,8,8", "--out", repository, *extra)  # fmt: skip


def _reference_matches(entry: Path, model: torch.nn.Module) -> None:
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    for variant in ("unfolded", "folded"):
        session = ort.InferenceSession(str(entry / f"{variant}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert np.max(np.abs(got - expected)) <= 1e-6 + 1e-5 * np.max(np.abs(expected)), variant


@pytest.mark.parametrize("layout", ["data_parallel", "state_dict_key", "model_key", "model_key_data_parallel"])
def test_checkpoint_layouts_load(capsys: pytest.CaptureFixture[str], tmp_path: Path, layout: str) -> None:
    reference = tiny_nets.randomise_batchnorm(tiny_nets.ConvBnHead(), seed=11)
    state = reference.state_dict()
    prefixed = {f"module.{key}": value for key, value in state.items()}
    layouts = {
        "data_parallel": prefixed,
        "state_dict_key": {"state_dict": state, "epoch": 3},
        "model_key": {"model": state, "optimizer": {}},
        "model_key_data_parallel": {"model": prefixed},
    }
    saved = layouts[layout]
    weights = tmp_path / "checkpoint.pt"
    torch.save(saved, weights)
    ran = _export(capsys, weights, tmp_path / "repo", "--name", "tiny")
    assert ran.code == 0, ran.err
    assert "warning" not in ran.err
    _reference_matches(tmp_path / "repo" / "tiny", reference)


def _one_line_failure(ran, repository: Path) -> str:  # type: ignore[no-untyped-def]
    assert ran.code == 1, ran.err
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), ran.err
    assert "\x1b" not in ran.err and "Traceback" not in ran.err
    assert repository_contents(repository) == []
    return lines[0][len(PREFIX) :]


def test_missing_and_unexpected_keys_are_counted_and_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = tiny_nets.build().state_dict()
    renamed = {key.replace("bn.", "norm.").replace("head.", "classifier."): value for key, value in state.items()}
    weights = tmp_path / "renamed.pt"
    torch.save(renamed, weights)
    message = _one_line_failure(_export(capsys, weights, tmp_path / "repo"), tmp_path / "repo")
    assert message == (
        "weights renamed.pt do not match the architecture: 7 missing keys (bn.weight, bn.bias, bn.running_mean, …); "
        "7 unexpected keys (norm.weight, norm.bias, norm.running_mean, …); pass weights saved from this model "
        "(torch.save(model.state_dict(), PATH))"
    )


def test_one_missing_key_is_named_without_an_ellipsis(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = tiny_nets.build().state_dict()
    del state["head.bias"]
    weights = tmp_path / "partial.pt"
    torch.save(state, weights)
    message = _one_line_failure(_export(capsys, weights, tmp_path / "repo"), tmp_path / "repo")
    assert message == (
        "weights partial.pt do not match the architecture: 1 missing key (head.bias); pass weights saved from "
        "this model (torch.save(model.state_dict(), PATH))"
    )


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", b"e" * 64, b""], ids=["text", "bytes", "empty"])
def test_a_file_that_is_not_a_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes) -> None:
    weights = tmp_path / "notes.pt"
    weights.write_bytes(content)
    message = _one_line_failure(_export(capsys, weights, tmp_path / "repo"), tmp_path / "repo")
    assert message == (
        f"weights {weights} is not a PyTorch checkpoint (torch.load cannot read it); "
        "save the weights with torch.save(model.state_dict(), PATH)"
    )


def test_a_checkpoint_that_holds_no_state_dict(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    weights = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], weights)
    message = _one_line_failure(_export(capsys, weights, tmp_path / "repo"), tmp_path / "repo")
    assert message == f"weights {weights} hold a list, not a state_dict; save model.state_dict()"


def test_terminal_escape_codes_are_removed() -> None:
    assert plain("\x1b[1mError(s)\x1b[0m in \x1b[31mloading\x1b[0m") == "Error(s) in loading"


def test_factory_without_weights_warns(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--input-shape", "1,3,8,8",
                 "--out", tmp_path / "repo", "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.err.strip().splitlines() == [UNTRAINED_WARNING.format(spec=f"{TINY}:build")]
    assert UNTRAINED_WARNING.format(spec="x").startswith("warning: no --weights given: folding the freshly initialised")


def test_module_spec_resolves_against_the_working_directory(tmp_path: Path) -> None:
    """`--model mynet:build` from the directory holding mynet.py, with the real console script."""
    (tmp_path / "mynet.py").write_text((REPOSITORY_ROOT / TINY).read_text())
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)}
    done = subprocess.run([sys.executable, "-m", "bnfold.cli", "fold-and-export", "--model", "mynet:build",
                           "--input-shape", "1,3,8,8", "--out", "repo", "--task", "classification"],
                          cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "repo" / "mynet" / "folded.onnx").is_file()
    assert "task: classification; the service checks that both variants agree on the arg-max class" in done.stdout
    _reference_matches(tmp_path / "repo" / "mynet", tiny_nets.build())


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--model", "justaname", "--input-shape", "1,3,8,8"], "--model 'justaname' is not a SPEC"),
     (["--model", f"{TINY}:build", "--input-shape", "1,3,eight"], "--input-shape '1,3,eight' is not a list"),
     (["--model", f"{TINY}:build"], f"{TINY}:build needs --input-shape"),
     (["--model", f"{TINY}:build", "--input-shape", "1,3,8,8", "--name", "a/b"], "argument --name: model name 'a/b'")],
    ids=["bad_spec", "bad_shape", "no_shape", "bad_name"],
)  # fmt: skip
def test_usage_errors_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)}
    command = [sys.executable, "-m", "bnfold.cli", "fold-and-export", *argv, "--out", str(tmp_path / "r")]
    done = subprocess.run(command, cwd=REPOSITORY_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(PREFIX + message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
