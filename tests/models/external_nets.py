"""A conv + BN net whose conv weight (16·3·3·3 float32 = 1728 bytes) is large enough to go to external data.

Used as a factory file (`tests/models/external_nets.py:build`) and to write a dynamo export with external data;
`assert_self_contained` is the one check that an entry holds its files with their data, every one hashed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnfold.contract.hashing import sha256_file
from tests.models.tiny_nets import randomise_batchnorm


class WideConvBn(nn.Module):
    """(N, 3, 8, 8) → Conv(16) → BN → ReLU → mean over space → Linear → (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def build(seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_batchnorm(WideConvBn(), seed=seed)


def export_with_external_data(model: nn.Module, path: Path) -> None:
    """`path` and `path.data` as torch.onnx.export(dynamo=True, external_data=True) writes them."""
    torch.onnx.export(
        model,
        (torch.randn(2, 3, 8, 8),),
        str(path),
        dynamo=True,
        optimize=False,
        external_data=True,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )


INLINE_FILES = {"model.json", "calibration.npz", "unfolded.onnx", "folded.onnx"}
ENTRY_FILES = INLINE_FILES | {"unfolded.onnx.data", "folded.onnx.data"}


def assert_self_contained(entry: Path) -> dict[str, Any]:
    """The entry holds exactly its files, each variant with its one data file, every file's SHA-256 in
    model.json; returns the manifest."""
    assert {path.name for path in entry.iterdir()} == ENTRY_FILES
    manifest: dict[str, Any] = json.loads((entry / "model.json").read_text())
    for variant in ("unfolded", "folded"):
        spec = manifest["variants"][variant]
        data = entry / f"{variant}.onnx.data"
        assert spec["sha256"] == sha256_file(entry / f"{variant}.onnx")
        assert spec["external_data"] == [{"file": data.name, "sha256": sha256_file(data)}]
    return manifest
