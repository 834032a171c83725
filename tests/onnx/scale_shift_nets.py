"""PyTorch nets whose inference BN is written by hand as `x * s + t` with buffers, as some ports of
TensorFlow and Paddle models do: the ONNX export carries Mul/Add by per-channel constants, no BN op."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ScaleShiftNet(nn.Module):
    """Conv → ·s + t → ReLU → Conv (groups = C) → ·s + t → mean → Linear → ·s + t, random s and t."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.depthwise = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.head = nn.Linear(6, 4)
        for name, shape in (("s1", (1, 6, 1, 1)), ("s2", (6, 1, 1)), ("s3", (4,))):
            self.register_buffer(name, torch.rand(shape, generator=generator) * 1.5 + 0.5)
            self.register_buffer(name.replace("s", "t"), torch.randn(shape, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv(x) * self.s1 + self.t1)
        x = self.depthwise(x) * self.s2 + self.t2
        return self.head(x.mean(dim=(2, 3))) * self.s3 + self.t3
