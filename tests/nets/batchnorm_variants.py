"""BatchNorm helpers for tests and benchmarks: find BNs, randomise their statistics, delete them.

- ``randomize_batchnorm``: random non-trivial γ, β, μ, σ² so no BN is an identity;
- ``delete_batchnorm``: the same network without its BNs, the best folding can possibly do.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_modules(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """(name, module) of every BatchNorm1d/2d/3d in `model`, in registration order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, BATCHNORM_TYPES)]


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN random non-trivial γ ~ U(0.5, 1.5), β ~ N(0, 0.1²), μ ~ N(0, 0.1²), σ² ~ U(0.5, 2).

    Mutates and returns `model`. The ranges keep activations of deep nets at a normal scale (no
    overflow, no denormals), so timings and error measurements are representative.
    """
    generator = torch.Generator().manual_seed(seed)
    for _, bn in batchnorm_modules(model):
        channels = bn.num_features
        fields = {
            "weight": torch.rand(channels, generator=generator) + 0.5,
            "bias": 0.1 * torch.randn(channels, generator=generator),
            "running_mean": 0.1 * torch.randn(channels, generator=generator),
            "running_var": 1.5 * torch.rand(channels, generator=generator) + 0.5,
        }
        for name, values in fields.items():
            tensor = getattr(bn, name)
            if tensor is not None:
                tensor.copy_(values.to(tensor.dtype))
    return model


def delete_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with every BatchNorm replaced by nn.Identity (the input is not changed).

    This is the lower bound for folding: the same convolutions with nothing after them. Convs that had
    no bias keep none (a folded conv gains one), so the baseline is, if anything, slightly cheaper.
    """
    stripped = copy.deepcopy(model)
    for name, _ in batchnorm_modules(stripped):
        parent_name, _, attribute = name.rpartition(".")
        parent = stripped.get_submodule(parent_name) if parent_name else stripped
        setattr(parent, attribute, nn.Identity())
    return stripped
