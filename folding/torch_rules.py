"""The fold patterns, as data: neighbour module type → rule.

A rule receives the neighbour module, the BatchNorm's affine map y = s·x + t and the number of dimensions
of the BN's input, and returns either the neighbour's new tensors (float64, by attribute name) or a
*reason* why it refuses. Tables are keyed by exact type: a subclass may change forward (weight
standardisation, for example), so it gets no rule. The maths is in folding/arithmetic.py:

- previous layer (producer z = W⋆x + b, BN after it): W' = W·s along the output-channel axis, b' = s·b + t;
- next layer (consumer of the BN's output): W'[:, c] = W[:, c]·s_c, b' = b + Σ_{c,k} W[:, c, k]·t_c,
  exact only when the consumer never reads zero padding (the padded border would otherwise get t_c);
- a lowered BatchNorm (ChannelScaleShift) absorbs the next BN by composing the two affine maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.conv import _ConvNd

from bnfold.folding.arithmetic import F64, ScaleShift, compose, fold_into_next, fold_into_previous
from bnfold.folding.errors import FoldingError
from bnfold.folding.plan import pads_with_zeros
from bnfold.folding.torch_conv_transpose import (
    ConvTranspose1dSeparateBias,
    ConvTranspose2dSeparateBias,
    ConvTranspose3dSeparateBias,
)
from bnfold.folding.torch_scale_shift import ChannelScaleShift
from bnfold.folding.torch_tensors import as_f64, optional_f64


@dataclass(frozen=True)
class NewTensors:
    """The neighbour's replacement tensors in float64, by attribute name (e.g. weight, bias)."""

    values: dict[str, F64]


Rule = Callable[[nn.Module, ScaleShift, int | None], NewTensors | str]


def _conv_weights(module: nn.Module) -> tuple[_ConvNd, F64, F64 | None]:
    assert isinstance(module, _ConvNd)
    return module, as_f64(module.weight), optional_f64(module.bias)


def _unbatched_conv(conv: _ConvNd, ndim: int | None, side: str) -> str | None:
    """The reason to refuse when the BN's tensor is not the conv's batched (N, C, spatial…) layout, else None.

    A conv also accepts unbatched (C, spatial…) input; its channels then sit on axis 0, while a BatchNorm
    always normalises axis 1, so shapes can line up (L == C) although the axes differ.
    """
    expected = len(conv.kernel_size) + 2
    if ndim == expected:
        return None
    return (
        f"the conv's {side} is {ndim}-D, not the batched {expected}-D (N, C, …) layout, so the BatchNorm "
        "normalises an axis other than the conv's channels; only batched inputs fold"
    )


def _into_conv(module: nn.Module, affine: ScaleShift, ndim: int | None) -> NewTensors | str:
    """Conv/ConvTranspose → BN: scale the output channels (a transposed conv's weight is
    [C_in, C_out/groups, k…], so its output channels sit on axis 1 within each group); only when the conv's
    output is batched, so that the BN's channel axis 1 is the conv's output-channel axis."""
    conv, weight, bias = _conv_weights(module)
    unbatched = _unbatched_conv(conv, ndim, "output")
    if unbatched is not None:
        return unbatched
    new_weight, new_bias = fold_into_previous(weight, bias, affine, transposed=conv.transposed, groups=conv.groups)
    return NewTensors({"weight": new_weight, "bias": new_bias})


def _into_linear(module: nn.Module, affine: ScaleShift, ndim: int | None) -> NewTensors | str:
    """Linear → BatchNorm1d: only when the BN's channel axis (1) is the Linear's feature axis (last)."""
    assert isinstance(module, nn.Linear)
    if ndim != 2:
        return (
            f"the Linear's output is {ndim}-D, so BatchNorm1d normalises its axis 1, not the feature axis "
            "the Linear produces; only (N, features) outputs fold"
        )
    weight, bias = fold_into_previous(as_f64(module.weight), optional_f64(module.bias), affine)
    return NewTensors({"weight": weight, "bias": bias})


def _into_scale_shift(module: nn.Module, affine: ScaleShift, ndim: int | None) -> NewTensors | str:
    """A lowered BN → BN: compose the affine maps, s = s₂·s₁, t = s₂·t₁ + t₂."""
    assert isinstance(module, ChannelScaleShift)
    composed = compose(ScaleShift(as_f64(module.scale), as_f64(module.shift)), affine)
    return NewTensors({"scale": composed.scale, "shift": composed.shift})


def has_hooks(module: nn.Module) -> bool:
    """True when the module runs forward (pre-)hooks of its own: folding cannot see what they do."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def reads_zero_padding(conv: _ConvNd) -> bool:
    """True when the conv pads its input with zeros (padding_mode 'zeros' and some padding > 0)."""
    if conv.padding_mode != "zeros":
        return False  # reflect/replicate/circular pad with copies of the input, which BN maps alike
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return False
        return any(d * (k - 1) > 0 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return any(p > 0 for p in conv.padding)


def _conv_absorbs(module: nn.Module, affine: ScaleShift, ndim: int | None) -> NewTensors | str:
    """BN → Conv (forward folding): exact only when the conv reads no zero padding (its border would get
    the BN's shift instead of zero) and its input is batched (so the BN's channel axis 1 is the conv's
    input-channel axis)."""
    conv, weight, bias = _conv_weights(module)
    unbatched = _unbatched_conv(conv, ndim, "input")
    if unbatched is not None:
        return unbatched
    if reads_zero_padding(conv):
        return pads_with_zeros("the conv", f"padding={conv.padding}")
    new_weight, new_bias = fold_into_next(weight, bias, affine, groups=conv.groups)
    return NewTensors({"weight": new_weight, "bias": new_bias})


def _linear_absorbs(module: nn.Module, affine: ScaleShift, ndim: int | None) -> NewTensors | str:
    """BatchNorm1d → Linear (forward folding): exact when the BN output is (N, features)."""
    assert isinstance(module, nn.Linear)
    if ndim != 2:
        return f"the BN output is {ndim}-D: the Linear reads its last axis, not the BN's channel axis 1"
    weight, bias = fold_into_next(as_f64(module.weight), optional_f64(module.bias), affine)
    return NewTensors({"weight": weight, "bias": bias})


def _conv_transpose_refuses(module: nn.Module, affine: ScaleShift, ndim: int | None) -> NewTensors | str:
    """BN → ConvTranspose: the shift t reaches each output through a position-dependent subset of the
    kernel taps (borders, stride phases), so no per-channel bias can stand in for it."""
    return (
        "a transposed conv sums a position-dependent subset of its kernel taps per output, so the BN's "
        "shift cannot become a bias"
    )


INTO_PREVIOUS: dict[type[nn.Module], Rule] = {
    nn.Conv1d: _into_conv,
    nn.Conv2d: _into_conv,
    nn.Conv3d: _into_conv,
    nn.ConvTranspose1d: _into_conv,
    nn.ConvTranspose2d: _into_conv,
    nn.ConvTranspose3d: _into_conv,
    ConvTranspose1dSeparateBias: _into_conv,
    ConvTranspose2dSeparateBias: _into_conv,
    ConvTranspose3dSeparateBias: _into_conv,
    nn.Linear: _into_linear,
    ChannelScaleShift: _into_scale_shift,
}

INTO_NEXT: dict[type[nn.Module], Rule] = {
    nn.Conv1d: _conv_absorbs,
    nn.Conv2d: _conv_absorbs,
    nn.Conv3d: _conv_absorbs,
    nn.Linear: _linear_absorbs,
    nn.ConvTranspose1d: _conv_transpose_refuses,
    nn.ConvTranspose2d: _conv_transpose_refuses,
    nn.ConvTranspose3d: _conv_transpose_refuses,
    ConvTranspose1dSeparateBias: _conv_transpose_refuses,
    ConvTranspose2dSeparateBias: _conv_transpose_refuses,
    ConvTranspose3dSeparateBias: _conv_transpose_refuses,
}


def apply_rule(
    table: dict[type[nn.Module], Rule], module: nn.Module, affine: ScaleShift, ndim: int | None
) -> NewTensors | str:
    """Look the module's exact type up in `table` and run its rule; a shape mismatch becomes a reason."""
    rule = table.get(type(module))
    if rule is None:
        return f"{type(module).__name__} has no fold rule in this direction"
    if has_hooks(module):
        return "it has forward hooks (e.g. torch.nn.utils.weight_norm), which may recompute its weights or output"
    try:
        return rule(module, affine, ndim)
    except FoldingError as error:
        return str(error)
