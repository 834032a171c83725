"""Decide and apply the fate of one BatchNorm: fold into the previous layer, else into the next, else lower
(or keep), always with a reason when it is not folded.

Graph conditions checked here, module conditions in the rule tables (folding/torch_rules.py):
- into the previous layer: the BN's input is a `call_module` whose output feeds nothing but this BN
  (a conv whose output also feeds a residual add must keep that output, so it is not folded into);
- into the next layer: the BN's output feeds exactly one `call_module`, as its only argument.
"""

from __future__ import annotations

from torch import fx

from bnfold.folding.plan import LOWERING_DISABLED, Decision, Plan, not_folded, not_lowered, output_needed_elsewhere
from bnfold.folding.report import Action
from bnfold.folding.torch_batchnorm import BatchNormSite
from bnfold.folding.torch_rewrite import install, lower, remove_batchnorm
from bnfold.folding.torch_rules import INTO_NEXT, INTO_PREVIOUS, NewTensors, apply_rule


def describe_node(node: fx.Node) -> str:
    """A short human description of a graph node, for refusal reasons."""
    if node.op == "placeholder":
        return f"the model input {node.name!r}"
    if node.op == "call_module":
        return f"layer {node.target}"
    if node.op == "call_function":
        return f"a call of {getattr(node.target, '__name__', node.target)} ({node.name})"
    if node.op == "call_method":
        return f"tensor method .{node.target}() ({node.name})"
    return f"{node.op} {node.name}"


def decide(graph_module: fx.GraphModule, site: BatchNormSite, ndims: dict[str, int], lower_unfoldable: bool) -> Plan:
    """Apply the first possible fold for `site` to `graph_module` and say what happened; the plan's
    reference and replacement are fx node names."""
    name = site.node.name
    if site.affine is None:
        return Plan(Decision.kept(str(site.refusal)), name, name)
    folded = fold_into_neighbour(graph_module, site, ndims.get(site.input.name))
    if isinstance(folded, Plan):
        return folded
    reason = folded
    if not lower_unfoldable:
        return Plan(Decision.kept(not_lowered(reason, LOWERING_DISABLED)), name, name)
    lowered = lower(graph_module, site)
    return Plan(Decision.lowered(reason), name, lowered.name)


def fold_into_neighbour(graph_module: fx.GraphModule, site: BatchNormSite, ndim: int | None) -> Plan | str:
    """Fold the site's affine map into the previous layer, else into the next; the plan, or why neither."""
    previous = _try_previous(graph_module, site, ndim)
    if not isinstance(previous, str):
        return previous
    following = _try_next(graph_module, site, ndim)
    if not isinstance(following, str):
        return following
    return not_folded(previous, following)


def _try_previous(graph_module: fx.GraphModule, site: BatchNormSite, ndim: int | None) -> Plan | str:
    producer = site.input
    if producer.op != "call_module":
        return f"{describe_node(producer)} is not a layer module"
    if len(producer.users) > 1:
        own = {site.node, *site.node.all_input_nodes}  # a traced affine map's own mul feeds its add
        others = ", ".join(describe_node(user) for user in producer.users if user not in own)
        return output_needed_elsewhere(f"layer {producer.target}", f"it also feeds {others}")
    assert site.affine is not None
    new = apply_rule(INTO_PREVIOUS, graph_module.get_submodule(str(producer.target)), site.affine, ndim)
    if not isinstance(new, NewTensors):
        return f"layer {producer.target}: {new}"
    target = install(graph_module, producer, new, site.node.name)
    remove_batchnorm(graph_module.graph, site)
    return Plan(Decision.folded(Action.FOLDED_INTO_PREVIOUS, target), site.node.name, producer.name)


def _try_next(graph_module: fx.GraphModule, site: BatchNormSite, ndim: int | None) -> Plan | str:
    users = list(site.node.users)
    if len(users) != 1:
        return f"the BN output feeds {len(users)} nodes, not exactly one layer"
    consumer = users[0]
    if consumer.op != "call_module" or consumer.args != (site.node,) or consumer.kwargs:
        return f"{describe_node(consumer)} is not a layer module taking only the BN output"
    assert site.affine is not None
    new = apply_rule(INTO_NEXT, graph_module.get_submodule(str(consumer.target)), site.affine, ndim)
    if not isinstance(new, NewTensors):
        return f"layer {consumer.target}: {new}"
    target = install(graph_module, consumer, new, site.node.name)
    remove_batchnorm(graph_module.graph, site)
    return Plan(Decision.folded(Action.FOLDED_INTO_NEXT, target), consumer.name, consumer.name)
