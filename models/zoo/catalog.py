"""The model zoo: which net trains on which data, how, and what its inputs and outputs are called.

`trained(name)` returns the trained net, from the weights cache when an identical run was cached before
(see models/zoo/cache.py), otherwise by training it (seeded, deterministic) and caching the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from torch import nn

from bnfold.models.zoo import architectures, cache
from bnfold.models.zoo.data import Split, load_split
from bnfold.models.zoo.training import TrainConfig, train

DEFAULT_SEED = 0
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: architecture, dataset, task, I/O names and training recipe."""

    name: str
    factory: Callable[[], nn.Module]
    dataset: str
    task: str  # "classification" or "reconstruction" (docs/repository-format.md)
    input_name: str
    output_name: str
    config: TrainConfig

    def input_shape(self, split: Split) -> tuple[int, ...]:
        """Per-sample input shape with a batch of 1, e.g. (1, 1, 8, 8)."""
        return (1, *split.x_test.shape[1:])


ZOO: dict[str, ZooModel] = {
    model.name: model
    for model in (
        ZooModel(
            "digits_resnet", architectures.DigitsResNet, "digits", "classification", "input", "logits",
            TrainConfig(epochs=12),
        ),
        ZooModel(
            "digits_mobilenet", architectures.DigitsMobileNet, "digits", "classification", "input", "logits",
            TrainConfig(epochs=15),
        ),
        ZooModel(
            "digits_autoencoder", architectures.DigitsAutoencoder, "digits", "reconstruction", "input",
            "reconstruction", TrainConfig(epochs=20),
        ),
        ZooModel(
            "breast_cancer_mlp", architectures.TabularMLP, "breast_cancer", "classification", "features",
            "logits", TrainConfig(epochs=40, batch_size=32, max_lr=5e-3),
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class TrainedZooModel:
    """A trained zoo net in eval mode with its held-out metrics and where it came from."""

    spec: ZooModel
    model: nn.Module
    split: Split
    metrics: dict[str, float]
    train_seconds: float
    from_cache: bool
    weights_path: Path

    def calibration_batch(self) -> NDArray[np.float32]:
        """The first CALIBRATION_BATCH held-out samples: the batch verification and the service run."""
        return np.ascontiguousarray(self.split.x_test[:CALIBRATION_BATCH])


def zoo_model(name: str) -> ZooModel:
    """The zoo entry called `name`; KeyError names the entries there are."""
    if name not in ZOO:
        raise KeyError(f"no zoo model {name!r}; the zoo has {', '.join(ZOO)}")
    return ZOO[name]


def trained(name: str, *, seed: int = DEFAULT_SEED, cache_dir: Path | None = None) -> TrainedZooModel:
    """The trained net `name`: loaded from the weights cache, or trained now and cached."""
    spec = zoo_model(name)
    split = load_split(spec.dataset)
    key = cache.CacheKey(name=name, seed=seed, config=repr(spec.config))
    hit = cache.load(key, spec.factory, cache_dir)
    if hit is not None:
        return TrainedZooModel(spec, hit.model, split, hit.metrics, hit.seconds, True, hit.path)
    outcome = train(spec.factory, split, spec.task, spec.config, seed)
    path = cache.store(key, outcome, cache_dir)
    return TrainedZooModel(spec, outcome.model, split, outcome.metrics, outcome.seconds, False, path)
