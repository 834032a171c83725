"""Frozen batch norms as detection code writes them, and a ResNet-style backbone built from them.

FrozenBatchNorm2d is torchvision's (torchvision.ops.misc.FrozenBatchNorm2d, also DETR's): four buffers and
x·scale + shift in forward. ScaleShiftBatchNorm2d is the other common spelling (detectron2-style, frozen
once at load): it precomputes `scale` and `shift` buffers and keeps no running statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d where the batch statistics and the affine parameters are fixed (torchvision's code)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        # move reshapes to the beginning to make it fuser-friendly
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias


class ScaleShiftBatchNorm2d(nn.Module):
    """A frozen BN stored as its affine map: y = x · scale[c] + shift[c] (no running statistics)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(num_features))
        self.register_buffer("shift", torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


Norm = type[FrozenBatchNorm2d] | type[ScaleShiftBatchNorm2d]


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1×1 → 3×3 (stride) → 1×1 (×4), each followed by a frozen BN; projection shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int, norm: Norm) -> None:
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), norm(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), norm(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), norm(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class FrozenBackbone(nn.Module):
    """Detection-style ResNet trunk: stem conv 7×7/2 → frozen BN → ReLU → max-pool, two stages of bottlenecks
    (the first block of each with a projection shortcut), and a pooled linear head."""

    def __init__(self, norm: Norm = FrozenBatchNorm2d, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 7, 2, 3, bias=False), norm(width)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Bottleneck(width, width, 1, norm), Bottleneck(width * 4, width, 1, norm))
        self.layer2 = nn.Sequential(
            Bottleneck(width * 4, width * 2, 2, norm), Bottleneck(width * 8, width * 2, 1, norm)
        )
        self.fc = nn.Linear(width * 8, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def frozen_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d | ScaleShiftBatchNorm2d)]


@torch.no_grad()
def randomise_frozen(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random statistics for every frozen BN: γ ∈ ±U(0.5, 1.5), β, μ ~ U(−1, 1), σ² ~ U(0.3, 2); a
    ScaleShiftBatchNorm2d gets the s, t they imply (mutates, returns)."""
    generator = torch.Generator().manual_seed(seed)
    for _, module in frozen_norms(model):
        n = module.weight.numel() if isinstance(module, FrozenBatchNorm2d) else module.scale.numel()

        def uniform(low: float, high: float, n: int = n) -> Tensor:
            return low + (high - low) * torch.rand(n, generator=generator)

        gamma = torch.where(torch.rand(n, generator=generator) < 0.3, -1.0, 1.0) * uniform(0.5, 1.5)
        beta, mean, var = uniform(-1, 1), uniform(-1, 1), uniform(0.3, 2.0)
        if isinstance(module, FrozenBatchNorm2d):
            for key, value in (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var)):
                getattr(module, key).copy_(value)
        else:
            module.scale.copy_(gamma / (var + 1e-5).sqrt())
            module.shift.copy_(beta - mean * module.scale)
    return model


def build() -> nn.Module:
    """The factory `bnfold fold-and-export --model tests/nets/frozen_batchnorm.py:build` loads: the
    FrozenBatchNorm2d backbone with random statistics, in eval mode."""
    torch.manual_seed(0)
    return randomise_frozen(FrozenBackbone(), seed=3).eval()


def build_scale_shift() -> nn.Module:
    """The same backbone with the precomputed scale/shift spelling."""
    torch.manual_seed(0)
    return randomise_frozen(FrozenBackbone(ScaleShiftBatchNorm2d), seed=3).eval()


def build_mixed() -> nn.Module:
    """The FrozenBatchNorm2d backbone whose stem norm is a real nn.BatchNorm2d (random statistics)."""
    model = build()
    model.bn1 = nn.BatchNorm2d(model.conv1.out_channels)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key, (low, high) in {
            "weight": (0.5, 1.5),
            "bias": (-1, 1),
            "running_mean": (-1, 1),
            "running_var": (0.3, 2),
        }.items():
            getattr(model.bn1, key).copy_(
                low + (high - low) * torch.rand(model.conv1.out_channels, generator=generator)
            )
    return model.eval()
