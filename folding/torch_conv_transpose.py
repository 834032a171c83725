"""Transposed convolutions that add their bias after the convolution in PyTorch eager mode.

Folding a BatchNorm into a ConvTranspose gives it a bias b' (folding/arithmetic.py). PyTorch's CPU kernels
run a transposed convolution *with* a bias markedly slower than the same convolution without one followed
by a broadcast add — measured with torch 2.13 on this project's machine (2 threads, float32; medians):

    ConvTranspose2d 16→16, 3×3, groups 4, (32, 16, 16, 16):  1701 µs with bias,  200 µs without + add
    ConvTranspose2d 64→64, 3×3, groups 1, (32, 64, 16, 16):  4315 µs with bias, 3488 µs without + add
    ConvTranspose1d 16→16, 3, groups 4, (32, 16, 16):          162 µs with bias,   75 µs without + add

so a folded model could be slower than the unfolded one, whose bias-free ConvTranspose ran on the fast
path. These subclasses compute the same function,

    y = ConvTransposeNd(x; W, no bias) + b[c]    (b broadcast over the channel axis of (N, C, …) or (C, …)),

with the add as a separate operation in eager mode. While being exported (torch.export, torch.onnx) they
run the parent's forward, so the exported graph has one ConvTranspose node carrying its bias, which
onnxruntime runs at no extra cost. A model without a bias, or a fold that does not touch the layer, keeps
the plain nn.ConvTranspose classes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ConvTransposeFunction = Callable[..., Tensor]


def _exporting() -> bool:
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


def _forward_with_separate_bias(
    layer: nn.modules.conv._ConvTransposeNd, x: Tensor, output_size: list[int] | None, function: ConvTransposeFunction
) -> Tensor:
    spatial = len(layer.kernel_size)
    output_padding = layer._output_padding(
        x,
        output_size,
        list(layer.stride),
        list(layer.padding),  # type: ignore[arg-type]  # ConvTranspose padding is always a tuple of ints
        list(layer.kernel_size),
        spatial,
        list(layer.dilation),
    )
    y = function(x, layer.weight, None, layer.stride, layer.padding, output_padding, layer.groups, layer.dilation)
    assert layer.bias is not None
    return y + layer.bias.reshape((-1,) + (1,) * spatial)


class ConvTranspose1dSeparateBias(nn.ConvTranspose1d):
    """nn.ConvTranspose1d whose bias is added after the convolution in eager mode (same function)."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        if self.bias is None or _exporting():
            return super().forward(input, output_size)
        return _forward_with_separate_bias(self, input, output_size, F.conv_transpose1d)


class ConvTranspose2dSeparateBias(nn.ConvTranspose2d):
    """nn.ConvTranspose2d whose bias is added after the convolution in eager mode (same function)."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        if self.bias is None or _exporting():
            return super().forward(input, output_size)
        return _forward_with_separate_bias(self, input, output_size, F.conv_transpose2d)


class ConvTranspose3dSeparateBias(nn.ConvTranspose3d):
    """nn.ConvTranspose3d whose bias is added after the convolution in eager mode (same function)."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        if self.bias is None or _exporting():
            return super().forward(input, output_size)
        return _forward_with_separate_bias(self, input, output_size, F.conv_transpose3d)


SEPARATE_BIAS: dict[type[nn.Module], type[nn.Module]] = {
    nn.ConvTranspose1d: ConvTranspose1dSeparateBias,
    nn.ConvTranspose2d: ConvTranspose2dSeparateBias,
    nn.ConvTranspose3d: ConvTranspose3dSeparateBias,
}


def separate_bias(module: nn.Module) -> None:
    """Turn an exact nn.ConvTranspose1d/2d/3d into its SeparateBias subclass in place (same parameters,
    buffers and hooks; only forward differs). Any other module is left as it is."""
    subclass = SEPARATE_BIAS.get(type(module))
    if subclass is not None:
        module.__class__ = subclass
