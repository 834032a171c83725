"""The four zoo architectures; together they exercise every folding pattern.

| net | folding patterns |
|---|---|
| `DigitsResNet` | Conv(bias=False)→BN→ReLU, BN before a residual add, a 1×1 strided shortcut Conv→BN |
| `DigitsMobileNet` | depthwise Conv(groups=C)→BN, pointwise 1×1 Conv→BN, Conv with bias→BN |
| `DigitsAutoencoder` | encoder Conv→BN; decoder ConvTranspose→BN, including a grouped ConvTranspose (groups=4) |
| `TabularMLP` | BatchNorm1d at the input (folds forward into the next Linear), Linear→BatchNorm1d |

Inputs: digits nets take (N, 1, 8, 8) images in [0, 1]; the MLP takes (N, 30) raw features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_bn_relu(c_in: int, c_out: int, *, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Sequential:
    """3×3 Conv (padding 1) → BatchNorm2d → ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=bias),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class ResidualBlock(nn.Module):
    """y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); shortcut = 1×1 Conv→BN when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class DigitsResNet(nn.Module):
    """(N, 1, 8, 8) → stem 16ch → residual 16ch 8×8 → residual 32ch 4×4 → global average → (N, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(1, 16)
        self.layer1 = ResidualBlock(16, 16, stride=1)
        self.layer2 = ResidualBlock(16, 32, stride=2)
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.stem(x)))  # (N, 32, 4, 4)
        return self.head(x.mean(dim=(2, 3)))  # (N, 10)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3×3 Conv(groups=C)→BN→ReLU, then pointwise 1×1 Conv→BN→ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.depthwise = conv_bn_relu(c_in, c_in, stride=stride, groups=c_in)
        self.pointwise = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class DigitsMobileNet(nn.Module):
    """(N, 1, 8, 8) → stem (Conv with bias) 16ch → DW-separable 32ch → DW-separable 64ch, stride 2 → (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(1, 16, bias=True)
        self.block1 = DepthwiseSeparable(16, 32, stride=1)
        self.block2 = DepthwiseSeparable(32, 64, stride=2)
        self.head = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.block1(self.stem(x)))  # (N, 64, 4, 4)
        return self.head(x.mean(dim=(2, 3)))  # (N, 10)


class DigitsAutoencoder(nn.Module):
    """(N, 1, 8, 8) → encoder 8×8→4×4→2×2 (32ch) → decoder ConvTranspose→BN back to (N, 1, 8, 8) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False),  # (N, 16, 4, 4)
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),  # (N, 32, 2, 2)
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 2, stride=2),  # (N, 16, 4, 4)
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 16, 3, padding=1, groups=4, bias=False),  # (N, 16, 4, 4), grouped
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 2, stride=2),  # (N, 1, 8, 8)
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class TabularMLP(nn.Module):
    """(N, F) raw features → BatchNorm1d → Linear→BN→ReLU → Linear→BN→ReLU → Linear → (N, classes) logits."""

    def __init__(self, features: int = 30, classes: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.input_norm = nn.BatchNorm1d(features)
        self.body = nn.Sequential(
            nn.Linear(features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.BatchNorm1d(hidden // 2),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden // 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.input_norm(x)))
