"""Ranks and element types of the values of an ONNX graph, from onnx shape inference.

Some folds depend on a tensor's rank (a BN's channel axis 1 is a MatMul's feature axis only for 2-D
tensors; a lowered scale is shaped (C, 1, …, 1) to the input's rank). Inference runs on the graph without
the data of its large initializers (folding.onnx_files.light_proto: their dims and types stay), so the
folded model carries no more value_info than its input did, no weight is copied, and inference on a
ResNet-50 is ~15× faster: shape inference reads the *values* only of small tensors (Reshape shapes, Slice
starts, …).

ONNX's inference of Reshape before opset 14 gives no shape at all to the output of a Reshape whose shape
input is computed (Keras Flatten as tf2onnx writes it: Reshape(x, Concat(Slice(Shape(x)), [-1]))), and so
no rank to anything after it. The output's rank is still known, the length of the 1-D shape input (as
Reshape-14 infers it): such outputs are declared with that rank and unknown dims, and inference runs again,
until no Reshape is left without one.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from bnfold.folding.onnx_files import light_proto


def infer_ranks(model: ir.Model) -> tuple[dict[str, int], dict[str, ir.DataType]]:
    """(rank by value name, element type by value name) for every value whose type inference knows."""
    light = light_proto(model)
    inferred = _infer(light) or light
    for _ in light.graph.node:  # every round declares at least one more Reshape output, or stops
        declared = _reshape_outputs_without_rank(inferred.graph)
        if not declared:
            break
        kept = [info for info in light.graph.value_info if info.name not in declared]
        del light.graph.value_info[:]
        light.graph.value_info.extend([*kept, *declared])
        again = _infer(light)
        if again is None:
            break
        inferred = again
    graph = inferred.graph
    ranks: dict[str, int] = {init.name: len(init.dims) for init in graph.initializer}
    elem_types: dict[str, ir.DataType] = {init.name: ir.DataType(init.data_type) for init in graph.initializer}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        tensor_type = info.type.tensor_type if info.type.HasField("tensor_type") else None
        if tensor_type is None:
            continue
        if tensor_type.HasField("shape"):
            ranks[info.name] = len(tensor_type.shape.dim)
        if tensor_type.elem_type:
            elem_types[info.name] = ir.DataType(tensor_type.elem_type)
    return ranks, elem_types


def _infer(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnx shape inference, or None where it fails (it is best effort: without it the rank-dependent folds
    refuse, with a reason)."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # onnx raises several types
        return None


def _reshape_outputs_without_rank(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """A declaration with rank n and unknown dims of each main-graph Reshape output that has no shape,
    where the Reshape's shape input is 1-D of known length n and its data input's element type is known."""
    infos = {info.name: info.type.tensor_type for info in [*graph.input, *graph.output, *graph.value_info]}
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    shapes |= {
        name: [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        for name, t in infos.items()
        if t.HasField("shape")
    }
    elem_types = {init.name: init.data_type for init in graph.initializer}
    elem_types |= {name: t.elem_type for name, t in infos.items() if t.elem_type}
    declared = []
    for node in graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        length, elem_type = shapes.get(node.input[1]), elem_types.get(node.input[0])
        if node.output[0] in shapes or length is None or len(length) != 1 or length[0] < 0 or elem_type is None:
            continue
        declared.append(onnx.helper.make_tensor_value_info(node.output[0], elem_type, [None] * length[0]))
    return declared
