"""Per-channel affine maps written the way tf2onnx and paddle2onnx write inference BatchNorm: Mul by a
per-channel constant, then Add of one, with random constants drawn from the builder's generator."""

from __future__ import annotations

import numpy as np

from tests.onnx.graphs import GraphBuilder


def scale_shift(g: GraphBuilder, x: str, shape: tuple[int, ...], output: str, *, swap: bool = False) -> str:
    """y = x·s + t with s, t of `shape` (|s| ∈ [0.5, 2], random signs); `swap` writes Mul(s, x), Add(t, ·)."""
    size = int(np.prod(shape))
    signs = g.rng.choice([-1.0, 1.0], size)
    s = g.const(f"{output}.s", (signs * (g.rng.random(size) * 1.5 + 0.5)).reshape(shape).astype(g.dtype))
    t = g.const(f"{output}.t", g.rng.standard_normal(shape).astype(g.dtype))
    scaled = g.node("Mul", [s, x] if swap else [x, s], f"{output}_scaled")
    return g.node("Add", [t, scaled] if swap else [scaled, t], output)


def nhwc_conv(g: GraphBuilder, x: str, c_in: int, c_out: int, output: str, **conv: object) -> str:
    """tf2onnx's Conv2D on NHWC data: Transpose(NHWC→NCHW) → Conv → Transpose(NCHW→NHWC)."""
    nchw = g.node("Transpose", [x], f"{output}_nchw", perm=[0, 3, 1, 2])
    group = int(conv.get("group", 1))  # type: ignore[call-overload]
    z = g.node("Conv", [nchw, g.weight(f"{output}.w", (c_out, c_in // group, 3, 3))], f"{output}_conv", **conv)
    return g.node("Transpose", [z], output, perm=[0, 2, 3, 1])
