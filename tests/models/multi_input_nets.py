"""Models with several inputs for the calibration and tensor-name tests, and their ONNX files.

Used as factories (`tests/models/multi_input_nets.py:build_two_inputs`) and exported to `.onnx` files with
the dynamo exporter and optimize=False, so that their BatchNormalization nodes stay in the graph. Every BN
gets randomised γ, β, μ, σ² (tests/models/tiny_nets.randomise_batchnorm).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from tests.models.tiny_nets import randomise_batchnorm

IMAGE = (3, 8, 8)  # per-sample shape of the image input
FEATURES = 5  # per-sample width of the feature input
TOKENS = 6  # token ids per sample
VOCABULARY = 10


def image_samples(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, size=(count, *IMAGE)).astype(np.float32)


def feature_samples(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, FEATURES)).astype(np.float32)


def id_samples(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCABULARY, size=(count, TOKENS), dtype=np.int64)


class TwoInputs(nn.Module):
    """image (N, 3, 8, 8) and features (N, 5) → Conv → BN2d and Linear → BN1d → sum → Linear → (N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.linear = nn.Linear(FEATURES, 4)
        self.bn_features = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, image: Tensor, features: Tensor) -> Tensor:
        pooled = torch.relu(self.bn(self.conv(image))).mean(dim=(2, 3))
        return self.head(pooled + torch.relu(self.bn_features(self.linear(features))))


class ImageAndTokens(nn.Module):
    """image (N, 3, 8, 8) float and ids (N, 6) int64 (an embedding lookup) → Conv → BN → … → (N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.embedding = nn.Embedding(VOCABULARY, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, image: Tensor, ids: Tensor) -> Tensor:
        pooled = torch.relu(self.bn(self.conv(image))).mean(dim=(2, 3))
        return self.head(pooled + self.embedding(ids).mean(dim=1))


class OptionalFeatures(TwoInputs):
    """TwoInputs whose features default to zeros: forward(image, features=None)."""

    def forward(self, image: Tensor, features: Tensor | None = None) -> Tensor:
        if features is None:
            features = torch.zeros(image.shape[0], FEATURES)
        return super().forward(image, features)


def build_two_inputs() -> nn.Module:
    torch.manual_seed(3)
    return randomise_batchnorm(TwoInputs(), seed=7)


def build_image_and_tokens() -> nn.Module:
    torch.manual_seed(4)
    return randomise_batchnorm(ImageAndTokens(), seed=8)


def build_optional_features() -> nn.Module:
    torch.manual_seed(5)
    return randomise_batchnorm(OptionalFeatures(), seed=9)


def example(model: nn.Module, batch: int = 2) -> tuple[Tensor, ...]:
    """One example batch per input of `model`."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch, *IMAGE, generator=generator)
    if isinstance(model, ImageAndTokens):
        return image, torch.randint(0, VOCABULARY, (batch, TOKENS), generator=generator)
    return image, torch.randn(batch, FEATURES, generator=generator)


def export_file(
    model: nn.Module,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    inputs: tuple[Tensor, ...] | None = None,
) -> Path:
    """`model` exported to `path` (dynamo, optimize=False, dynamic batch axis on every input), on `inputs`
    (default: example(model))."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    inputs = inputs or example(model)
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            inputs,
            dynamo=True,
            optimize=False,  # the default optimisation would fuse the BatchNorms
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=tuple({0: batch} for _ in inputs),
        )
    assert program is not None
    onnx.save(program.model_proto, str(path))
    return path
