"""Each bad input of fold-and-export: a one-line error naming the problem and the fix, exit ≠ 0, nothing left behind."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.models import tiny_nets
from tests.models.cli_helpers import bnfold, repository_contents

TINY = "tests/models/tiny_nets.py"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def _fails_cleanly(ran_code: int, err: str, repository: Path, *fragments: str, code: int = 1) -> None:
    """One line, no traceback, nothing written; exit 1 (the input cannot be used) or 2 (a usage error)."""
    assert ran_code == code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bnfold fold-and-export: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]
    assert repository_contents(repository) == []


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("tests/models/missing_net.py:build", ("missing_net.py not found", "check the path")),
        (f"{TINY}:broken", ("raised ValueError: the factory is broken on purpose", "fix the factory")),
        (f"{TINY}:not_a_module", ("returned a dict, not a torch.nn.Module",)),
        (f"{TINY}:no_such_factory", ("has no function 'no_such_factory'",)),
        ("tests.models.no_such_module:build", ("module 'tests.models.no_such_module' not found",)),
        ("zoo:no_such_net", ("no zoo model 'no_such_net'", "digits_resnet")),
        ("missing.pt2", ("missing.pt2 not found",)),
        ("missing.onnx", ("missing.onnx not found",)),
        ("justaname", ("is not a SPEC", "zoo:NAME")),
    ],
    ids=["missing_file", "factory_raises", "not_a_module", "missing_factory", "missing_module", "unknown_zoo",
         "missing_pt2", "missing_onnx", "not_a_spec"],
)  # fmt: skip
def test_unusable_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path, spec: str, fragments: tuple[str]) -> None:
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", spec, "--input-shape", "1,3,8,8", "--out", repository)
    _fails_cleanly(ran.code, ran.err, repository, *fragments, code=2 if spec == "justaname" else 1)


def test_weights_that_do_not_match_the_architecture(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    weights = tmp_path / "other.pt"
    torch.save(tiny_nets.other_architecture().state_dict(), weights)
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--weights", weights,
                 "--input-shape", "1,3,8,8", "--out", repository)  # fmt: skip
    _fails_cleanly(ran.code, ran.err, repository, "other.pt do not match the architecture", "size mismatch")


class _Marker:
    """Unpickling this would create a file: proof that arbitrary objects were (not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_weights_are_never_unpickled(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    weights = tmp_path / "evil.pt"
    weights.write_bytes(pickle.dumps(_Marker(str(marker))))
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--weights", weights,
                 "--input-shape", "1,3,8,8", "--out", repository)  # fmt: skip
    _fails_cleanly(ran.code, ran.err, repository, "cannot read weights", "state_dict")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("shape", "fragments"),
    [("1,5,8,8", ("rejects input shape 1,5,8,8", "--input-shape it expects")),
     ("1,3,eight", ("not a list of positive integers",)), ("1,0,8,8", ("not a list of positive integers",))],
    ids=["rejected_by_model", "not_numbers", "zero_size"],
)  # fmt: skip
def test_bad_input_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path, shape: str, fragments: tuple[str]) -> None:
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--input-shape", shape, "--out", repository)
    _fails_cleanly(ran.code, ran.err, repository, *fragments, code=1 if shape == "1,5,8,8" else 2)


def test_missing_input_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--out", repository)
    _fails_cleanly(ran.code, ran.err, repository, "needs --input-shape", code=2)


def test_output_directory_that_exists(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    (repository / "mine").mkdir(parents=True)
    (repository / "mine" / "keep.txt").write_text("user data")
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--input-shape", "1,3,8,8",
                 "--name", "mine", "--out", repository)  # fmt: skip
    assert ran.code == 1 and "already exists" in ran.err and "--name" in ran.err
    assert repository_contents(repository) == ["mine", "mine/keep.txt"]


def test_name_the_format_forbids(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A --name the format forbids is a usage error (exit 2), one line, before anything is written."""
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--input-shape", "1,3,8,8",
                 "--name", "../escape", "--out", repository)  # fmt: skip
    assert ran.code == 2 and "Traceback" not in ran.err
    assert ran.err.strip().splitlines() == [
        "bnfold fold-and-export: argument --name: model name '../escape' is not allowed; use 1–64 letters, "
        "digits, '_', '.', '-' starting with a letter or digit (see bnfold fold-and-export --help)"
    ]
    assert repository_contents(repository) == []


def test_name_with_a_trailing_newline_is_refused_by_the_real_cli(tmp_path: Path) -> None:
    """The whole name must match the rule: `re.match` with `$` would let "nl\\n" through."""
    repository = tmp_path / "repo"
    script = Path(sys.executable).with_name("bnfold")
    done = subprocess.run(
        [str(script), "fold-and-export", "--model", f"{TINY}:build", "--input-shape", "1,3,8,8",
         "--name", "nl\n", "--out", str(repository)],
        cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "bnfold fold-and-export: argument --name: model name 'nl\\n' is not allowed; use 1–64 letters, "
        "digits, '_', '.', '-' starting with a letter or digit (see bnfold fold-and-export --help)"
    ]
    assert done.stdout == "" and repository_contents(repository) == []


def test_failed_verification_names_the_excess_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A zero tolerance cannot be met by a folded float32 model: the check fails, by a stated amount."""
    repository, weights = tmp_path / "repo", tmp_path / "tiny.pt"
    torch.save(tiny_nets.build().state_dict(), weights)  # with --weights: no warning about initial weights
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--input-shape", "1,3,8,8", "--weights",
                 weights, "--atol", "0", "--rtol", "0", "--out", repository, "--json")  # fmt: skip
    _fails_cleanly(ran.code, ran.err, repository, "differs from the PyTorch model by max |Δ| = ", "over the tolerance")
    assert ran.json()["ok"] is False


def test_usage_error_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ran = bnfold(capsys, "fold-and-export", "--out", tmp_path)
    assert ran.code == 2
    assert ran.err.strip().splitlines() == [
        "bnfold fold-and-export: the following arguments are required: --model (see bnfold fold-and-export --help)"
    ]


@pytest.mark.parametrize("layout", ["out_is_a_file", "out_below_a_file"])
def test_output_path_that_cannot_be_a_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, layout: str
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    out = blocker if layout == "out_is_a_file" else blocker / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", f"{TINY}:build", "--input-shape", "1,3,8,8", "--out", out)
    assert ran.code == 1 and len(ran.err.strip().splitlines()) == 1
    assert f"--out {out}: {blocker} is a file, not a directory; give a directory path" in ran.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"] and blocker.read_text() == "not a directory"


def test_onnx_file_with_a_fixed_batch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
    )  # fmt: skip
    source = tmp_path / "fixed.onnx"
    save(helper.make_model(graph), str(source))
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", source, "--out", repository)
    _fails_cleanly(ran.code, ran.err, repository, "input 'x' has no dynamic batch axis 0", "re-export")
