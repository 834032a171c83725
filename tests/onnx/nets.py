"""Small PyTorch networks whose ONNX exports (BN kept) exercise fold_onnx end to end."""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    """Conv→BN, grouped ConvTranspose→BN, Linear→BN1d: three BatchNorms the exporter must keep."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2)
        self.up_bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)
        self.head_bn = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.up_bn(self.up(torch.relu(self.bn(self.conv(x)))))  # (N, 4, 2H, 2W)
        return self.head_bn(self.head(features.mean(dim=(2, 3))))  # (N, 5)


class ResidualBlock(nn.Module):
    """ResNet basic block with a 1×1 projection shortcut: four BNs, all foldable into their convs."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


class MobileStyleNet(nn.Module):
    """Stem, a residual block, a depthwise-separable pair, a BN → unpadded 1×1 conv and a BN1d → Linear head,
    and one BN after a residual Add (no foldable neighbour: lowered)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = ResidualBlock(8, 16)
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16))
        self.pointwise = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.after_add = nn.BatchNorm2d(16)
        self.pre_bn = nn.BatchNorm2d(16)
        self.project = nn.Conv2d(16, 12, 1)
        self.pre_head = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))  # (N, 16, H/2, W/2)
        x = self.after_add(x + self.pointwise(torch.relu(self.depthwise(x))))
        x = self.project(self.pre_bn(torch.relu(x)))  # (N, 12, H/2, W/2)
        return self.head(self.pre_head(x.mean(dim=(2, 3))))  # (N, 10)
