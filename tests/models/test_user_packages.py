"""A user's own `models/` package in the working directory breaks neither the `bnfold` command nor
`from bnfold.folding import fold`: bnfold lives under the one name `bnfold`, and a factory file's imports
resolve next to the file first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bnfold.folding import fold

ROOT = Path(__file__).resolve().parents[2]
BNFOLD = Path(sys.executable).parent / "bnfold"

USER_NET = """
from torch import nn

MARKER = "the user's models package"


class Net(nn.Module):
    def __init__(self, blocks: int) -> None:
        super().__init__()
        layers = []
        for index in range(blocks):
            layers += [nn.Conv2d(3 if index == 0 else 6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))
"""

FACTORY = """
import torch


def build():
    from models.net import Net

    net = Net(blocks=5)
    generator = torch.Generator().manual_seed(7)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(6, generator=generator))
            module.running_var.copy_(torch.rand(6, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(6, generator=generator))
            module.bias.data.copy_(torch.randn(6, generator=generator))
    return net.eval()
"""


def _user_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text("")
    (project / "models" / "net.py").write_text(textwrap.dedent(USER_NET))
    (project / "mynet.py").write_text(textwrap.dedent(FACTORY))
    return project


def _environment(tmp_path: Path, source_tree_on_path: bool) -> dict[str, str]:
    """PYTHONPATH giving this checkout's bnfold: either the source tree itself (its top-level `models/` folder
    is then importable as `models` too, the hardest case) or, as after `pip install`, only the `bnfold` name."""
    if source_tree_on_path:
        path = str(ROOT)
    else:
        site = tmp_path / "site"
        site.mkdir()
        (site / "bnfold").symlink_to(ROOT / "bnfold")
        path = str(site)
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize("source_tree_on_path", [False, True], ids=["installed", "source-tree"])
def test_a_users_models_package_is_the_one_their_factory_imports(tmp_path: Path, source_tree_on_path: bool) -> None:
    project = _user_project(tmp_path)
    env = _environment(tmp_path, source_tree_on_path)
    command = [str(BNFOLD), "fold-and-export", "--model", "mynet.py:build", "--input-shape", "1,3,8,8"]
    command += ["--out", "repo", "--json"]
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["name"] == "mynet"
    # The user's Net(blocks=5) has five BatchNorms: all five in unfolded.onnx, none left in folded.onnx.
    assert summary["batchnorm_nodes"] == {"unfolded": 5, "folded": 0}
    manifest = json.loads((project / "repo" / "mynet" / "model.json").read_text())
    assert manifest["variants"]["unfolded"]["batchnorm_nodes"] == 5
    assert manifest["provenance"]["source"] == "mynet.py:build"


@pytest.mark.parametrize("source_tree_on_path", [False, True], ids=["installed", "source-tree"])
def test_bnfold_folding_imports_beside_a_users_models_package(tmp_path: Path, source_tree_on_path: bool) -> None:
    project = _user_project(tmp_path)
    env = _environment(tmp_path, source_tree_on_path)
    script = (
        "from bnfold.folding import fold\n"
        "import models.net, bnfold.models\n"
        "print(models.net.MARKER)\n"
        "print(fold.__module__)\n"
        "print(bnfold.models.__file__ != models.__file__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["the user's models package", fold.__module__, "True"]
