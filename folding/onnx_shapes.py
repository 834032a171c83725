"""Ranks and element types of the values of an ONNX graph, from onnx shape inference.

Some folds depend on a tensor's rank (a BN's channel axis 1 is a MatMul's feature axis only for 2-D
tensors; a lowered scale is shaped (C, 1, …, 1) to the input's rank). Inference runs on the graph without
the data of its large initializers (folding.onnx_files.light_proto: their dims and types stay), so the
folded model carries no more value_info than its input did, no weight is copied, and inference on a
ResNet-50 is ~15× faster: shape inference reads the *values* only of small tensors (Reshape shapes, Slice
starts, …).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from bnfold.folding.onnx_files import light_proto


def infer_ranks(model: ir.Model) -> tuple[dict[str, int], dict[str, ir.DataType]]:
    """(rank by value name, element type by value name) for every value whose type inference knows."""
    light = light_proto(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except Exception:  # inference is best effort: without it the rank-dependent folds refuse, with a reason
        inferred = light
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
