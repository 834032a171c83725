"""The per-channel affine module a BatchNorm with no foldable neighbour is lowered to.

No `from __future__ import annotations`: torch.jit.script resolves the annotations as objects, and a folded
model with a lowered BN must stay scriptable like the unfolded one.
"""

from torch import Tensor, nn


class ChannelScaleShift(nn.Module):
    """y = scale[c] · x + shift[c] over channel axis 1 of an (N, C, …) input: an inference-time BatchNorm
    without its statistics (exported to ONNX as one Mul and one Add).

    scale and shift are buffers (not trainable), stored in the dtype of the BatchNorm they replace.
    """

    scale: Tensor
    shift: Tensor

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        if scale.shape != shift.shape or scale.dim() != 1:
            raise ValueError(f"scale {tuple(scale.shape)} and shift {tuple(shift.shape)} must be equal 1-D shapes")
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        broadcast = [-1] + [1] * (x.dim() - 2)  # (C,) → (C, 1, …) to meet (N, C, …)
        return x * self.scale.reshape(broadcast) + self.shift.reshape(broadcast)

    def extra_repr(self) -> str:
        return f"channels={self.scale.shape[0]}"
