"""A fold-and-export killed with kill -9 while writing leaves its `.NAME.tmp-…` directory; the next write into
that repository removes it — and only it: a live writer's directory (its lock held), a directory without
bnfold's marker and anything else stay. `bnfold verify` reports such directories, `build-default` removes and
reports them. Everything runs the real CLI as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from bnfold.folding.export import export_onnx
from bnfold.models.export.temporaries import claim_temporary, marker_of, release_temporary
from tests.models import tiny_nets

BNFOLD = str(Path(sys.executable).parent / "bnfold")
WRITE_DEADLINE_S = 180.0  # import torch, fold, check and start writing 2 × 64 MB on a loaded machine


def _onnx(path: Path, model: nn.Module, example: torch.Tensor) -> Path:
    proto = export_onnx(model, (example,), input_names=["x"], output_names=["y"])
    path.write_bytes(proto.SerializeToString())
    return path


def _large_onnx(path: Path) -> Path:
    """Linear(4096, 4096) + BatchNorm1d: 64 MB per variant, so the write takes long enough to be caught."""
    model = tiny_nets.randomise_batchnorm(nn.Sequential(nn.Linear(4096, 4096), nn.BatchNorm1d(4096)), seed=3)
    return _onnx(path, model, torch.randn(2, 4096))


def _small_onnx(path: Path) -> Path:
    return _onnx(path, tiny_nets.randomise_batchnorm(tiny_nets.ConvBnHead(), seed=4), torch.randn(2, 3, 8, 8))


def _temporaries(repository: Path) -> list[Path]:
    """The writer's temporary directories (not their `.lock` markers) in `repository`."""
    found = sorted(repository.glob(".*.tmp-*")) if repository.exists() else []
    return [path for path in found if not path.name.endswith(".lock") and path.is_dir()]


def _kill_while_writing(model: Path, repository: Path) -> Path:
    """Start fold-and-export, SIGKILL it as soon as its temporary directory appears; that directory."""
    process = subprocess.Popen(
        [BNFOLD, "fold-and-export", "--model", str(model), "--out", str(repository)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + WRITE_DEADLINE_S
    try:
        while not (found := _temporaries(repository)) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        _, err = process.communicate(timeout=30)
    assert found, f"no temporary directory within {WRITE_DEADLINE_S} s (exit {process.returncode}): {err[-500:]!r}"
    assert process.returncode == -signal.SIGKILL, "fold-and-export finished before it could be killed"
    return found[0]


def _bnfold(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BNFOLD, *map(str, argv)], capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_a_killed_writers_temporary_is_removed_by_the_next_write_and_a_live_one_is_kept(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    stale = _kill_while_writing(_large_onnx(tmp_path / "large.onnx"), repository)
    assert stale.name.startswith(".large.tmp-") and stale.is_dir()
    assert json.loads(marker_of(stale).read_text())["writer"] == "bnfold"
    assert not (repository / "large").exists()

    live = claim_temporary(repository, "other")  # a writer in this process, holding its lock
    foreign = repository / ".notes.tmp-keep"  # the name pattern, but no marker: not bnfold's
    foreign.mkdir()
    try:
        ran = _bnfold("fold-and-export", "--model", _small_onnx(tmp_path / "small.onnx"), "--out", repository)
        assert ran.returncode == 0, ran.stderr
        assert not stale.exists() and not marker_of(stale).exists()
        assert live.is_dir() and marker_of(live).is_file()
        assert foreign.is_dir()
        expected = [live.name, marker_of(live).name, foreign.name, "small"]
        assert sorted(path.name for path in repository.iterdir()) == sorted(expected)
    finally:
        release_temporary(live)


def test_verify_reports_a_stale_temporary_and_leaves_it(tmp_path: Path) -> None:
    """A temporary whose writer is gone (a child that claimed it and killed itself with -9: the state a
    killed fold-and-export leaves, without the 64 MB write): verify names it and leaves it in place."""
    repository = tmp_path / "repo"
    assert (
        _bnfold("fold-and-export", "--model", _small_onnx(tmp_path / "small.onnx"), "--out", repository).returncode == 0
    )
    abandoned = _abandoned_temporary(repository, "gone")
    verified = _bnfold("verify", repository / "small", "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["stale_temporaries"] == [str(abandoned)]
    assert abandoned.is_dir()
    text = _bnfold("verify", repository / "small")
    assert f"note: {abandoned} was left by a writer that died" in text.stdout


def _abandoned_temporary(repository: Path, name: str) -> Path:
    """A writer's temporary whose writer process has exited without finishing (a child killed with -9)."""
    code = (
        "import os, sys; from pathlib import Path; "
        "from bnfold.models.export.temporaries import claim_temporary; "
        f"print(claim_temporary(Path({str(repository)!r}), {name!r}), flush=True); os.kill(os.getpid(), 9)"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    path = Path(child.stdout.strip())
    assert path.is_dir() and marker_of(path).is_file()
    return path


def test_build_default_removes_and_reports_stale_temporaries(tmp_path: Path, zoo_repository_copy: Path) -> None:
    abandoned = _abandoned_temporary(zoo_repository_copy, "digits_resnet")
    ran = _bnfold("build-default", "--out", zoo_repository_copy, "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["removed_temporaries"] == [str(abandoned)]
    assert not abandoned.exists()
    assert os.path.isdir(zoo_repository_copy / "digits_resnet")
