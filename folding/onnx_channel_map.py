"""A per-channel affine map y = s·x + t in an ONNX graph: what every ONNX fold rule folds.

An inference BatchNormalization node is one (folding/onnx_batchnorm.py); so is a `Mul` by a per-channel
constant, optionally followed by an `Add` of one, or a lone per-channel `Add` (s = 1), as tf2onnx and
paddle2onnx write inference BN (folding/onnx_affine.py). A map is described by the nodes that compute it,
which input of the first node is x, and the axis of x that it scales (the channel axis).

tf2onnx keeps activations NHWC: Conv sits between Transpose(NHWC→NCHW) and Transpose(NCHW→NHWC), and the
map's constant lies on x's last axis. When x is the output of a Transpose whose perm sends that axis to
axis 1 of the Transpose's input, Transpose(z) scaled on axis a equals Transpose(z scaled on axis perm[a]),
so the map folds backward into the layer producing z, and the Transpose is written again after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnfold.folding.arithmetic import ScaleShift
from bnfold.folding.errors import FoldingError
from bnfold.folding.onnx_graph import GraphEditor
from bnfold.folding.plan import Rewrite

BATCHNORM = "batchnorm"
AFFINE = "affine"


@dataclass(frozen=True)
class ChannelMap:
    """y = s·x + t along `axis` of x, computed by `nodes` (in order; the last one's output is y).

    x is input `x_slot` of nodes[0], read at fold time, so an earlier fold that replaced x's producer is
    seen. `transpose` is the Transpose producing x when the map folds backward through it (see above).
    `dtype` is the dtype a lowered scale is stored in when x's is unknown.
    """

    name: str
    kind: str
    nodes: tuple[ir.Node, ...]
    affine: ScaleShift
    dtype: np.dtype[np.generic]
    x_slot: int = 0
    axis: int = 1
    transpose: ir.Node | None = None

    @property
    def x(self) -> ir.Value:
        """The value the map reads."""
        value = self.nodes[0].inputs[self.x_slot]
        if value is None:
            raise FoldingError(f"{self.nodes[0].op_type} {self.name!r} has no input x; the model is invalid")
        return value

    @property
    def y(self) -> ir.Value:
        """The value the map computes."""
        return self.nodes[-1].outputs[0]

    @property
    def source(self) -> ir.Value:
        """What a backward fold folds into the producer of: x, or the input of the Transpose producing x."""
        if self.transpose is None:
            return self.x
        value = self.transpose.inputs[0]
        if value is None:
            raise FoldingError(f"Transpose {self.transpose.name!r} has no input; the model is invalid")
        return value

    @property
    def source_axis(self) -> int:
        """The axis of `source` the map scales (1 through a Transpose: that is how the map was found)."""
        return self.axis if self.transpose is None else 1

    @property
    def backward_nodes(self) -> list[ir.Node]:
        """The nodes a backward fold removes besides the producer (the Transpose is written again)."""
        return [self.transpose, *self.nodes] if self.transpose is not None else list(self.nodes)

    @property
    def sources(self) -> tuple[str, ...]:
        """The names of the nodes the map came from, for the report."""
        return tuple(node.name or f"{node.op_type}→{node.outputs[0].name}" for node in self.nodes)

    def label(self) -> str:
        """How refusals call it: 'BN' for a BatchNormalization, 'the Mul/Add map' otherwise."""
        return "BN" if self.kind == BATCHNORM else f"the {'/'.join(n.op_type for n in self.nodes)} map"


OnnxRule = Callable[[GraphEditor, ir.Node, ChannelMap], str | Rewrite]
"""A fold rule of the ONNX engine: (editor, the neighbour node, the map) → the rewrite it made, or the
reason it refused."""
