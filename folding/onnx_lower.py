"""Lower an inference BatchNorm that has no foldable neighbour to y = x·s + t (one Mul and one Add).

s and t (folding.arithmetic.batchnorm_scale_shift) are stored with shape (C, 1, …, 1) so that they
broadcast over channel axis 1 of an (N, C, D1, …) input, in the dtype of the BN's input X (rounded once,
folding/rounding.py). This needs
the rank of X, which shape inference must have found.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.folding.onnx_channel_map import ChannelMap
from bnfold.folding.onnx_graph import GraphEditor
from bnfold.folding.plan import Rewrite
from bnfold.folding.rounding import round_once


def lower_batchnorm(editor: GraphEditor, batchnorm: ChannelMap) -> str | Rewrite:
    """Replace `bn` by Mul + Add; returns the Add it became and the probe to measure it at, or why it
    cannot be lowered."""
    x = batchnorm.x
    rank = editor.ranks.get(str(x.name))
    if rank is None or rank < 2:
        return f"the rank of its input {x.name!r} is unknown or < 2, so the per-channel scale cannot be shaped"
    dtype = _input_dtype(editor, x, batchnorm)
    broadcast = (-1,) + (1,) * (rank - 2)  # (C,) → (C, 1, …) to meet (N, C, …)
    name = batchnorm.name
    scale = editor.initializer(f"{name}_scale", round_once(batchnorm.affine.scale.reshape(broadcast), dtype))
    shift = editor.initializer(f"{name}_shift", round_once(batchnorm.affine.shift.reshape(broadcast), dtype))
    multiply = editor.node("Mul", [x, scale], (), editor.unique(f"{name}_mul"))
    add = editor.node("Add", [multiply.outputs[0], shift], (), editor.unique(f"{name}_add"))
    probe = str(batchnorm.y.name)
    editor.replace(list(batchnorm.nodes), [multiply, add], batchnorm.y)
    return Rewrite(target=add.name or "", probe=probe)


def _input_dtype(editor: GraphEditor, x: ir.Value, batchnorm: ChannelMap) -> np.dtype[np.generic]:
    if x.dtype is not None:
        return x.dtype.numpy()
    known = editor.elem_types.get(str(x.name))
    return known.numpy() if known is not None else batchnorm.dtype
