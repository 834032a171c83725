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

with the add as a separate operation in eager mode. While being exported (torch.export, torch.onnx) or
compiled by torch.jit.script they pass the bias to the convolution as the parent class does, so the exported
graph has one ConvTranspose node carrying its bias: onnxruntime adds a bias inside ConvTranspose for about
3 % of the layer (397 vs 384 µs on the layer above), where a separate Add node costs 9 % (420 µs).
(torch.jit.trace records the eager path: a convolution and an add.) Under autocast the bias is cast to the
convolution's dtype, as the parent's kernel does. A fold that does not touch a layer keeps the plain
nn.ConvTranspose class. The three forwards are spelled out because TorchScript compiles each one and
supports neither super() nor function arguments.
"""

# The `type: ignore[arg-type]`s: torch types ConvTranspose's stride/padding/dilation as `str | tuple` (a Conv
# may have padding="same") where _output_padding and F.conv_transpose* want int lists; a ConvTranspose only
# ever holds int tuples (torch's own ConvTranspose forwards carry the same ignores).
# No `from __future__ import annotations`: TorchScript resolves these annotations as objects.

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.jit.unused
def _exporting() -> bool:
    """True while torch.export / torch.onnx trace the model (never called when TorchScript runs it)."""
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


class ConvTranspose1dSeparateBias(nn.ConvTranspose1d):
    """nn.ConvTranspose1d whose bias is added after the convolution in eager mode (same function)."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        weight, stride, padding, dilation, groups = self.weight, self.stride, self.padding, self.dilation, self.groups
        # fmt: off
        output_padding = self._output_padding(
            input, output_size, stride, padding, self.kernel_size, 1, dilation  # type: ignore[arg-type]
        )
        bias = self.bias
        if bias is None or torch.jit.is_scripting() or _exporting():
            return F.conv_transpose1d(
                input, weight, bias, stride, padding, output_padding, groups, dilation  # type: ignore[arg-type]
            )
        y = F.conv_transpose1d(
            input, weight, None, stride, padding, output_padding, groups, dilation  # type: ignore[arg-type]
        )
        # fmt: on
        return y + bias.to(y.dtype).reshape(-1, 1)  # autocast: keep the convolution's dtype


class ConvTranspose2dSeparateBias(nn.ConvTranspose2d):
    """nn.ConvTranspose2d whose bias is added after the convolution in eager mode (same function)."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        weight, stride, padding, dilation, groups = self.weight, self.stride, self.padding, self.dilation, self.groups
        # fmt: off
        output_padding = self._output_padding(
            input, output_size, stride, padding, self.kernel_size, 2, dilation  # type: ignore[arg-type]
        )
        bias = self.bias
        if bias is None or torch.jit.is_scripting() or _exporting():
            return F.conv_transpose2d(
                input, weight, bias, stride, padding, output_padding, groups, dilation  # type: ignore[arg-type]
            )
        y = F.conv_transpose2d(
            input, weight, None, stride, padding, output_padding, groups, dilation  # type: ignore[arg-type]
        )
        # fmt: on
        return y + bias.to(y.dtype).reshape(-1, 1, 1)  # autocast: keep the convolution's dtype


class ConvTranspose3dSeparateBias(nn.ConvTranspose3d):
    """nn.ConvTranspose3d whose bias is added after the convolution in eager mode (same function)."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        weight, stride, padding, dilation, groups = self.weight, self.stride, self.padding, self.dilation, self.groups
        # fmt: off
        output_padding = self._output_padding(
            input, output_size, stride, padding, self.kernel_size, 3, dilation  # type: ignore[arg-type]
        )
        bias = self.bias
        if bias is None or torch.jit.is_scripting() or _exporting():
            return F.conv_transpose3d(
                input, weight, bias, stride, padding, output_padding, groups, dilation  # type: ignore[arg-type]
            )
        y = F.conv_transpose3d(
            input, weight, None, stride, padding, output_padding, groups, dilation  # type: ignore[arg-type]
        )
        # fmt: on
        return y + bias.to(y.dtype).reshape(-1, 1, 1, 1)  # autocast: keep the convolution's dtype


SEPARATE_BIAS: dict[type[nn.Module], type[nn.Module]] = {
    nn.ConvTranspose1d: ConvTranspose1dSeparateBias,
    nn.ConvTranspose2d: ConvTranspose2dSeparateBias,
    nn.ConvTranspose3d: ConvTranspose3dSeparateBias,
}


SEPARATE_BIAS_CLASSES = frozenset(SEPARATE_BIAS.values())


def separate_bias(module: nn.Module) -> None:
    """Turn an exact nn.ConvTranspose1d/2d/3d into its SeparateBias subclass in place (same parameters,
    buffers and hooks; only forward differs). Any other module is left as it is."""
    subclass = SEPARATE_BIAS.get(type(module))
    if subclass is not None:
        module.__class__ = subclass
