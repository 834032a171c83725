"""Reference architectures built locally (no torchvision, no downloads), for folding tests and benchmarks.

The layer structure and sizes follow torchvision's definitions, and so do the module names (``conv1``,
``bn1``, ``layer1.0.downsample.1``, ``features.3.conv.1.1``, …):

- ``resnet18``: stem conv7×7/2 + BN + ReLU + maxpool, four stages of two BasicBlocks (3×3 conv + BN,
  3×3 conv + BN, identity or 1×1-conv + BN downsample), global average pool, Linear.
  BatchNorms: 1 + 8·2 + 3 downsample = **20**.
- ``resnet50``: the same stem, stages of 3/4/6/3 Bottlenecks (1×1, 3×3, 1×1·4, each followed by BN; the
  first block of each stage has a 1×1-conv + BN downsample). BatchNorms: 1 + 16·3 + 4 = **53**.
- ``mobilenet_v2``: conv3×3/2 + BN + ReLU6, 17 inverted residuals (expand 1×1 + BN + ReLU6 when t ≠ 1,
  depthwise 3×3 + BN + ReLU6, project 1×1 + BN, residual when stride 1 and C_in = C_out), conv1×1 to
  1280 + BN + ReLU6, dropout, Linear. BatchNorms: 1 + 2 (the t = 1 block) + 16·3 + 1 = **52**.
- ``densenet_small``: a small DenseNet-BC: conv + BN + ReLU + maxpool stem, dense layers
  BN → ReLU → conv1×1 → BN → ReLU → conv3×3 whose output is concatenated to their input, transitions
  BN → ReLU → conv1×1 → avgpool, a final BN + ReLU, pool, Linear. The pre-activation BNs sit after a
  concatenation and before a ReLU, so no neighbour can absorb them: the hard case for folding.
  BatchNorms: 1 + 2·Σ block_config + (len(block_config) − 1) + 1 (28 with the defaults).

Initialisation is deterministic for a given ``seed`` and leaves the global RNG untouched: convs
Kaiming-normal (fan_out, ReLU gain) as in torchvision, BN γ = 1, β = 0, μ = 0, σ² = 1, Linear PyTorch
default. The BN helpers ``randomize_batchnorm`` and ``delete_batchnorm`` live in
tests/nets/batchnorm_variants.py and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from tests.nets.batchnorm_variants import (
    BATCHNORM_TYPES,
    batchnorm_modules,
    delete_batchnorm,
    randomize_batchnorm,
)


def conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, activation: type[nn.Module] | None = None
) -> nn.Sequential:
    """Conv (no bias, 'same'-style padding k//2) → BN (→ activation): torchvision's Conv2dNormActivation."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(c_in, width * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3×3): 1×1 → 3×3 → 1×1·4, BN after each, plus shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, width * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    """1×1 conv + BN on the shortcut when the block changes resolution or width, else None."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """torchvision's ResNet: stem, four stages (64/128/256/512 wide), average pool, fc."""

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        c_in = 64
        stages: list[nn.Sequential] = []
        for index, (width, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            blocks: list[nn.Module] = []
            for position in range(depth):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(block(c_in, width, stride))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512·expansion, H/32, W/32)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (N, num_classes)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1×1 expand + BN + ReLU6] → 3×3 depthwise + BN + ReLU6 → 1×1 project + BN (+ x)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn(c_in, hidden, 1, activation=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expand ratio t, output channels c, repeats n, first stride s), torchvision's width_mult = 1.0 table.
MOBILENET_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 at width multiplier 1.0: features (stem, 17 blocks, 1×1 to 1280), classifier."""

    def __init__(self, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        features: list[nn.Module] = [conv_bn(3, 32, 3, 2, activation=nn.ReLU6)]
        c_in = 32
        for t, c, n, s in MOBILENET_V2_SETTING:
            for repeat in range(n):
                features.append(InvertedResidual(c_in, c, s if repeat == 0 else 1, t))
                c_in = c
        features.append(conv_bn(c_in, 1280, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, H, W)
        x = self.features(x)  # (N, 1280, H/32, W/32)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class DenseLayer(nn.Module):
    """Pre-activation bottleneck: concat(x, conv2(relu(norm2(conv1(relu(norm1(x))))))) along channels."""

    def __init__(self, c_in: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C + growth, H, W)
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, new], dim=1)


class DenseNet(nn.Module):
    """DenseNet-BC: stem, dense blocks separated by halving transitions, final BN + ReLU, pool, Linear."""

    def __init__(
        self, growth_rate: int, block_config: Sequence[int], num_init_features: int, bn_size: int, num_classes: int
    ) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [
            ("conv0", nn.Conv2d(3, num_init_features, 7, 2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(3, 2, padding=1)),
        ]
        channels = num_init_features
        for index, depth in enumerate(block_config):
            block = nn.Sequential()
            for position in range(depth):
                block.add_module(f"denselayer{position + 1}", DenseLayer(channels, growth_rate, bn_size))
                channels += growth_rate
            layers.append((f"denseblock{index + 1}", block))
            if index != len(block_config) - 1:
                layers.append((f"transition{index + 1}", _transition(channels, channels // 2)))
                channels //= 2
        layers += [("norm5", nn.BatchNorm2d(channels)), ("relu5", nn.ReLU(inplace=True))]
        self.features = nn.Sequential()
        for name, module in layers:
            self.features.add_module(name, module)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, H, W)
        x = self.features(x)  # (N, C, H/2^(k+1), W/2^(k+1))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _transition(c_in: int, c_out: int) -> nn.Sequential:
    """BN → ReLU → 1×1 conv → 2×2 average pool, with torchvision's submodule names."""
    transition = nn.Sequential()
    transition.add_module("norm", nn.BatchNorm2d(c_in))
    transition.add_module("relu", nn.ReLU(inplace=True))
    transition.add_module("conv", nn.Conv2d(c_in, c_out, 1, bias=False))
    transition.add_module("pool", nn.AvgPool2d(2, 2))
    return transition


def _initialise(model: nn.Module) -> None:
    """torchvision's init: Kaiming-normal fan_out convs, BN identity, Linear left at PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, BATCHNORM_TYPES):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _build(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build and initialise under a private RNG seeded with `seed`; return the model in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
        _initialise(model)
    return model.eval()


def resnet18(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """ResNet-18 (11.7 M parameters at 1000 classes, 20 BatchNorm2d)."""
    return _build(lambda: ResNet(BasicBlock, (2, 2, 2, 2), num_classes), seed)


def resnet50(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """ResNet-50 v1.5 (25.6 M parameters at 1000 classes, 53 BatchNorm2d)."""
    return _build(lambda: ResNet(Bottleneck, (3, 4, 6, 3), num_classes), seed)


def mobilenet_v2(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """MobileNetV2 width 1.0 (3.5 M parameters at 1000 classes, 52 BatchNorm2d)."""
    return _build(lambda: MobileNetV2(num_classes), seed)


def densenet_small(
    num_classes: int = 1000,
    seed: int = 0,
    growth_rate: int = 12,
    block_config: Sequence[int] = (4, 4, 4),
    num_init_features: int = 24,
    bn_size: int = 4,
) -> nn.Module:
    """A small DenseNet-BC (28 BatchNorm2d with the defaults, most of them pre-activation)."""
    return _build(lambda: DenseNet(growth_rate, block_config, num_init_features, bn_size, num_classes), seed)


REFERENCE_NETS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "densenet_small": densenet_small,
}


__all__ = [
    "REFERENCE_NETS",
    "batchnorm_modules",
    "delete_batchnorm",
    "densenet_small",
    "mobilenet_v2",
    "randomize_batchnorm",
    "resnet18",
    "resnet50",
]
