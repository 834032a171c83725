"""`--input-names` / `--output-names` for an ONNX graph: rename its inputs and outputs; onnx only, no torch.

The graph's inputs are its graph inputs that are not initializers, in order; its outputs are its graph
outputs. Renaming value OLD to NEW rewrites every reference to OLD: node inputs and outputs (in subgraphs
too, which may read the outer graph's values by name), graph inputs, outputs and value_info, initializers
and quantization annotations. It is done once on the source graph, before folding, so folded.onnx and
unfolded.onnx carry the same names. A NEW name must not already name another value of the graph (a
collision would merge two tensors), and one value that is both a graph input and a graph output cannot
get two names.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from bnfold.models.errors import UsageError


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (IR < 4 lists initializers as inputs too)."""
    initializers = {initializer.name for initializer in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def renamed(model: onnx.ModelProto, input_names: list[str] | None, output_names: list[str] | None) -> onnx.ModelProto:
    """A copy of `model` with its inputs and outputs renamed (the model itself when nothing changes);
    UsageError when a count does not match the graph or a new name is taken."""
    mapping: dict[str, str] = {}
    current_inputs = [value.name for value in graph_inputs(model)]
    current_outputs = [value.name for value in model.graph.output]
    for flag, new, old, what in (
        ("--input-names", input_names, current_inputs, "takes {n} input(s)"),
        ("--output-names", output_names, current_outputs, "returns {n} output(s)"),
    ):
        if new is None:
            continue
        if len(new) != len(old):
            raise UsageError(
                f"{flag} gives {len(new)} name(s); the graph {what.format(n=len(old))} ({', '.join(old)}): "
                f"give {len(old)}"
            )
        for before, after in zip(old, new, strict=True):
            if mapping.setdefault(before, after) != after:
                raise UsageError(
                    f"the graph returns its input {before!r} as an output, so it cannot be called both "
                    f"{mapping[before]!r} and {after!r}; give them the same name or add an Identity node"
                )
    mapping = {before: after for before, after in mapping.items() if before != after}
    if not mapping:
        return model
    taken = list(mapping.values())
    for after in taken:
        if taken.count(after) > 1:
            raise UsageError(f"the input and an output are both called {after!r}; give them different names")
    _check_free(model, mapping, set(input_names or ()))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _rename_graph(copy.graph, mapping)
    return copy


def _check_free(model: onnx.ModelProto, mapping: dict[str, str], input_names: set[str]) -> None:
    """UsageError when a new name already names another value of the graph."""
    others = set(_value_names(model.graph)) - set(mapping)
    for after in mapping.values():
        if after in others:
            flag = "--input-names" if after in input_names else "--output-names"
            raise UsageError(
                f"{flag}: {after!r} already names another value of the graph; choose a name the graph does not use"
            )


def _value_names(graph: onnx.GraphProto) -> Iterator[str]:
    """Every value name the graph and its subgraphs define or read ('' marks an omitted optional input)."""
    for value in [*graph.input, *graph.output, *graph.value_info]:
        yield value.name
    for initializer in graph.initializer:
        yield initializer.name
    for node in graph.node:
        yield from (name for name in [*node.input, *node.output] if name)
        for subgraph in _subgraphs(node):
            yield from _value_names(subgraph)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _rename_graph(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)
    for initializer in graph.initializer:
        initializer.name = mapping.get(initializer.name, initializer.name)
    for annotation in graph.quantization_annotation:
        annotation.tensor_name = mapping.get(annotation.tensor_name, annotation.tensor_name)
    for node in graph.node:
        for names in (node.input, node.output):
            for index, name in enumerate(names):
                names[index] = mapping.get(name, name)
        for subgraph in _subgraphs(node):
            _rename_graph(subgraph, mapping)
