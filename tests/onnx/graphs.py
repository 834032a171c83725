"""Build small ONNX graphs directly with onnx.helper, and check folds against an independent reference.

The reference is onnx.reference.ReferenceEvaluator on the *unfolded* graph (no fusions at all; see
`reference` for the one exception); the candidate is onnxruntime with every graph optimisation disabled on
the *folded* graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from bnfold.folding.compare import Tolerance, discrepancy
from bnfold.folding.export import count_op
from bnfold.folding.onnx_fold import OnnxFoldResult, fold_onnx
from bnfold.folding.report import Action
from tests.onnx.ort_helpers import run_ort

FP32 = Tolerance(atol=1e-6, rtol=1e-5)


@dataclass
class GraphBuilder:
    """Accumulates nodes, initializers and graph inputs/outputs; `rng` draws every tensor."""

    seed: int
    dtype: type[np.floating] = np.float32
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    @property
    def elem_type(self) -> int:
        return helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))

    def input(self, name: str, shape: list[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, self.elem_type, shape))
        return name

    def output(self, name: str, rank: int | None = None) -> None:
        shape = None if rank is None else [None] * rank
        self.outputs.append(helper.make_tensor_value_info(name, self.elem_type, shape))

    def const(self, name: str, array: NDArray[np.generic]) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        return self.const(name, self.rng.standard_normal(shape).astype(self.dtype))

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op.lower()}_{output}", **attributes))
        return output

    def batchnorm(self, x: str, channels: int, output: str, *, stats_dtype: type | None = None, **attrs: Any) -> str:
        """A BN with random γ, β, μ and σ² ∈ [0.2, 2.2]; name 'bn_<output>'."""
        stats = stats_dtype or self.dtype
        names = [
            self.const(f"{output}.gamma", self.rng.standard_normal(channels).astype(stats)),
            self.const(f"{output}.beta", self.rng.standard_normal(channels).astype(stats)),
            self.const(f"{output}.mean", self.rng.standard_normal(channels).astype(stats)),
            self.const(f"{output}.var", (self.rng.random(channels) * 2 + 0.2).astype(stats)),
        ]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *names], [output], name=f"bn_{output}", **attrs))
        return output

    def model(self, opset: int = 15) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model

    def feeds(self, batch: int = 3) -> dict[str, NDArray[np.generic]]:
        """Random inputs; a symbolic dim ('N') becomes `batch`."""
        feeds = {}
        for value in self.inputs:
            dims = value.type.tensor_type.shape.dim
            shape = [batch if d.dim_param else d.dim_value for d in dims]
            feeds[value.name] = self.rng.standard_normal(shape).astype(self.dtype)
        return feeds


def reference(model: onnx.ModelProto, feeds: dict[str, NDArray[np.generic]]) -> list[NDArray[np.generic]]:
    """ReferenceEvaluator's outputs, except where onnx 1.23's reference is wrong and onnxruntime (no
    optimisation) is used instead: BatchNormalization-9 (it treats the default momentum as training mode)
    and grouped ConvTranspose (it reshapes the weight as if group were 1)."""
    opset = {o.domain: o.version for o in model.opset_import}.get("", 0)
    grouped_transpose = any(
        node.op_type == "ConvTranspose" and any(a.name == "group" and a.i > 1 for a in node.attribute)
        for node in model.graph.node
    )
    if opset < 14 or grouped_transpose:
        return run_ort(model, feeds)
    return [np.asarray(out) for out in ReferenceEvaluator(model).run(None, feeds)]


def fold_and_check(
    model: onnx.ModelProto,
    feeds: dict[str, NDArray[np.generic]],
    *,
    batchnorms_left: int,
    tolerance: Tolerance = FP32,
    lower_unfoldable: bool = True,
) -> OnnxFoldResult:
    """Fold; assert the input is untouched, the output valid, the BN count, and equal outputs."""
    before = model.SerializeToString()
    result = fold_onnx(model, feeds, lower_unfoldable=lower_unfoldable)
    assert model.SerializeToString() == before, "fold_onnx modified its input"
    onnx.checker.check_model(result.model, full_check=True)
    assert count_op(result.model) == batchnorms_left
    expected = reference(model, feeds)
    actual = run_ort(result.model, feeds)
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == want.dtype
        gap = discrepancy(got, want)
        assert gap.within(tolerance), gap.describe()
    assert result.report.max_output_error is not None and result.report.max_output_error <= (
        tolerance.atol + tolerance.rtol * max(float(np.max(np.abs(e))) for e in expected)
    )
    return result


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def actions(result: OnnxFoldResult) -> dict[str, Action]:
    return {entry.bn: entry.action for entry in result.report}
