"""Counting nodes of one op type in an ONNX model: the main graph, every subgraph (If/Loop/Scan bodies) and
the model's local functions. model.json's `variants.*.batchnorm_nodes` is this count for BatchNormalization.

Duck-typed over onnx's protobuf classes (`ModelProto.graph.node`, `NodeProto.attribute`, `AttributeProto.g` /
`.graphs`, `ModelProto.functions`), so the contract needs no onnx import. Only the default domain counts
("" or "ai.onnx"): a custom-domain op of the same name is another op.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DEFAULT_DOMAINS = ("", "ai.onnx")


def count_op(model: Any, op_type: str = "BatchNormalization") -> int:
    """Number of default-domain `op_type` nodes in an onnx.ModelProto, its subgraphs and local functions."""
    total = _count_in_nodes(model.graph.node, op_type)
    for function in model.functions:
        total += _count_in_nodes(function.node, op_type)
    return total


def _count_in_nodes(nodes: Iterable[Any], op_type: str) -> int:
    count = 0
    for node in nodes:
        count += node.op_type == op_type and node.domain in DEFAULT_DOMAINS
        for attribute in node.attribute:
            if attribute.HasField("g"):
                count += _count_in_nodes(attribute.g.node, op_type)
            count += sum(_count_in_nodes(graph.node, op_type) for graph in attribute.graphs)
    return count
