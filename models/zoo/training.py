"""Seeded, deterministic training and held-out evaluation of the zoo nets.

Adam with a one-cycle learning-rate schedule; cross-entropy for classification, mean squared error for
reconstruction. Determinism: `torch.manual_seed(seed)` before the net is built, a seeded generator for the
mini-batch order, `torch.use_deterministic_algorithms(True)` and one intra-op thread while training (the
summation order, hence the weights, then do not depend on the machine's core count). Denormal floats are
flushed to zero while training: Adam's tiny second moments otherwise hit the CPU's slow denormal path,
which made the zoo 20× slower on a loaded machine. All three settings are restored afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from bnfold.models.zoo.data import Split


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int
    batch_size: int = 64
    max_lr: float = 1e-2
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class TrainOutcome:
    """A trained net (eval mode), its held-out metrics and the wall time training took."""

    model: nn.Module
    metrics: dict[str, float]
    seconds: float


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch, deterministic algorithms, one thread, denormals flushed: for the duration of the block."""
    previous, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(previous)


def _loss_for(task: str) -> Callable[[Tensor, Tensor], Tensor]:
    if task == "classification":
        return nn.functional.cross_entropy
    return nn.functional.mse_loss


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A seeded permutation of range(n) cut into mini-batches; a last batch of 1 is dropped (BN needs ≥ 2)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    return [b for b in batches if len(b) > 1]


def train(factory: Callable[[], nn.Module], split: Split, task: str, config: TrainConfig, seed: int) -> TrainOutcome:
    """Build the net with `factory` under `seed`, train it on split.x_train, evaluate it on split.x_test."""
    start = time.perf_counter()
    with deterministic(seed):
        model = factory()
        x = torch.from_numpy(split.x_train)
        target = x if task == "reconstruction" else torch.from_numpy(split.y_train)
        generator = torch.Generator().manual_seed(seed)
        steps = config.epochs * len(_batches(len(x), config.batch_size, torch.Generator()))
        optimiser = torch.optim.Adam(model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.max_lr, total_steps=steps)
        loss_fn = _loss_for(task)
        model.train()
        for _ in range(config.epochs):
            for index in _batches(len(x), config.batch_size, generator):
                optimiser.zero_grad()
                loss_fn(model(x[index]), target[index]).backward()
                optimiser.step()
                schedule.step()
    model.eval()
    metrics = evaluate(model, split.x_test, split.y_test, task)
    return TrainOutcome(model=model, metrics=metrics, seconds=time.perf_counter() - start)


def evaluate(model: nn.Module, x: NDArray[np.float32], y: NDArray[np.int64], task: str) -> dict[str, float]:
    """Held-out metrics: {'test_accuracy'} for classification, {'reconstruction_mse'} for reconstruction."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model(torch.from_numpy(x))
    model.train(was_training)
    if task == "classification":
        accuracy = (output.argmax(dim=1) == torch.from_numpy(y)).double().mean().item()
        return {"test_accuracy": round(accuracy, 6)}
    mse = nn.functional.mse_loss(output.double(), torch.from_numpy(x).double()).item()
    return {"reconstruction_mse": float(f"{mse:.6g}")}
