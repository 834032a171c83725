"""Tiny factories for the fold-and-export SPEC and bad-input tests.

Used both as a file (`tests/models/tiny_nets.py:build`) and as a module (`tests.models.tiny_nets:build`).
Every BN gets randomised γ, β, μ, σ² so that folding changes real numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBnHead(nn.Module):
    """(N, 3, 8, 8) → Conv → BN → ReLU → mean over space → Linear → (N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def randomise_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """γ ∈ [0.5, 2], β ∈ [−1, 1], μ ∈ [−1, 1], σ² ∈ [0.2, 3] for every BN, drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                count = module.num_features
                module.weight.copy_(torch.rand(count, generator=generator) * 1.5 + 0.5)
                module.bias.copy_(torch.rand(count, generator=generator) * 2 - 1)
                module.running_mean.copy_(torch.rand(count, generator=generator) * 2 - 1)
                module.running_var.copy_(torch.rand(count, generator=generator) * 2.8 + 0.2)
    return model.eval()


def build() -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(ConvBnHead(), seed=0)


def broken() -> nn.Module:
    raise ValueError("the factory is broken on purpose")


def not_a_module() -> object:
    return {"not": "a module"}


def no_batchnorm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)).eval()


def other_architecture() -> nn.Module:
    """Same layer names as ConvBnHead but 6 conv channels: its weights do not fit ConvBnHead."""
    model = ConvBnHead()
    model.conv, model.bn, model.head = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Linear(6, 2)
    return model
