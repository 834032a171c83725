"""Graph surgery on a captured GraphModule: install fused tensors, drop a BN node, lower a BN.

Fused tensors are installed as *new* Parameters/buffers (never written in place), so a tensor shared with
another module (tied weights) keeps its old value there. A module referenced from more than one place in
the graph (a conv called at two call sites, or read through get_attr) is first copied, and only the call
site being folded is pointed at the copy: the other call sites keep computing what they did.
"""

from __future__ import annotations

import copy

from torch import fx, nn

from bnfold.folding.errors import FoldingError
from bnfold.folding.torch_batchnorm import BatchNormSite
from bnfold.folding.torch_rules import NewTensors
from bnfold.folding.torch_scale_shift import ChannelScaleShift
from bnfold.folding.torch_tensors import rounded_tensor


def reference_count(graph: fx.Graph, path: str) -> int:
    """How many call_module/get_attr nodes reach the module at `path`, its attributes or its ancestors."""
    count = 0
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            target = str(node.target)
            if target == path or target.startswith(path + ".") or path.startswith(target + "."):
                count += 1
    return count


def unique_path(graph_module: fx.GraphModule, wanted: str) -> str:
    """`wanted`, or `wanted_2`, `wanted_3`, … : the first path not yet taken in the module tree."""
    taken = {name for name, _ in graph_module.named_modules()}
    taken |= {name for name, _ in graph_module.named_parameters(remove_duplicate=False)}
    taken |= {name for name, _ in graph_module.named_buffers(remove_duplicate=False)}
    candidate, number = wanted, 1
    while candidate in taken:
        number += 1
        candidate = f"{wanted}_{number}"
    return candidate


def install(graph_module: fx.GraphModule, node: fx.Node, new: NewTensors, site_label: str) -> str:
    """Give the module called by `node` the tensors `new` (rounded once to the module's dtype).

    Returns the module path that now holds them: the module's own path, or a per-call-site copy
    `<path>_<site_label>` when the module is referenced elsewhere in the graph.
    """
    path = str(node.target)
    module = graph_module.get_submodule(path)
    if reference_count(graph_module.graph, path) > 1:
        module = copy.deepcopy(module)
        path = unique_path(graph_module, f"{path}_{site_label}")
        graph_module.add_submodule(path, module)
        node.target = path
    for attribute, values in new.values.items():
        _set_tensor(module, attribute, values)
    return path


def _set_tensor(module: nn.Module, attribute: str, values: object) -> None:
    """Replace module.<attribute> by a new Parameter/buffer of the same shape, dtype and device."""
    like = getattr(module, attribute)
    reference = like if like is not None else module.get_parameter("weight")
    tensor = rounded_tensor(values, reference.dtype, reference.device)  # type: ignore[arg-type]
    if like is not None and tuple(tensor.shape) != tuple(like.shape):
        raise FoldingError(  # a fused tensor keeps the exact original shape, never a broadcast of it
            f"internal error: fused {attribute} has shape {tuple(tensor.shape)}, original {tuple(like.shape)}"
        )
    if attribute in module._parameters:
        setattr(module, attribute, nn.Parameter(tensor, requires_grad=reference.requires_grad))
    else:
        module.register_buffer(attribute, tensor)


def remove_batchnorm(graph: fx.Graph, site: BatchNormSite) -> None:
    """Route the BN's users to its input and erase it."""
    site.node.replace_all_uses_with(site.input)
    _erase(graph, site.node)


def _erase(graph: fx.Graph, node: fx.Node) -> None:
    """Erase an unused node, then the get_attr nodes (a functional BN's statistics) only it used."""
    attributes = [value for value in node.all_input_nodes if value.op == "get_attr"]
    graph.erase_node(node)
    for attribute in attributes:
        if not attribute.users:
            graph.erase_node(attribute)


def lower(graph_module: fx.GraphModule, site: BatchNormSite) -> fx.Node:
    """Replace the BN node by a call of a new ChannelScaleShift module; returns the new node."""
    assert site.affine is not None
    scale = rounded_tensor(site.affine.scale, site.dtype, site.device)
    shift = rounded_tensor(site.affine.shift, site.dtype, site.device)
    path = unique_path(graph_module, site.name.replace("@", "_") + "_scale_shift")
    graph_module.add_submodule(path, ChannelScaleShift(scale, shift).eval())  # as the inference-mode BN was
    with graph_module.graph.inserting_after(site.node):
        lowered = graph_module.graph.call_module(path, (site.input,))
    site.node.replace_all_uses_with(lowered)
    _erase(graph_module.graph, site.node)
    return lowered
