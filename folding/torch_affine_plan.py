"""Fold a per-channel affine site (folding/torch_affine.py) exactly like a BatchNorm, or keep it with its reason.

The site is y = s·x + t, so it folds by the BatchNorm rules and arithmetic (folding/torch_plan.py,
folding/torch_rules.py, folding/arithmetic.py): into the previous layer when nothing else reads that layer's
output, else into the next layer when it reads no zero padding. A site that folds into neither is left in
the graph untouched (it already is a multiply and an add: lowering it would change nothing).
"""

from __future__ import annotations

from torch import fx

from bnfold.folding.plan import Decision, Plan
from bnfold.folding.torch_affine import AffineSite
from bnfold.folding.torch_plan import fold_into_neighbour

_CONSTANT_OPS = ("get_attr", "call_function", "call_method")


def decide_affine(graph_module: fx.GraphModule, affine_site: AffineSite, ndims: dict[str, int]) -> Plan:
    """Fold the site into a neighbour and erase its ops, or keep it; reference/replacement are node names."""
    site = affine_site.site
    name = site.node.name
    if site.affine is None:
        return Plan(Decision.kept(str(site.refusal)), name, name)
    folded = fold_into_neighbour(graph_module, site, ndims.get(site.input.name))
    if isinstance(folded, str):
        return Plan(Decision.kept(folded), name, name)
    erase_unused(graph_module.graph, affine_site.chain)
    return folded


def erase_unused(graph: fx.Graph, nodes: tuple[fx.Node, ...]) -> None:
    """Erase the chain's ops left without users, then the constant computations only they used."""
    pending = list(reversed(nodes))
    alive = set(graph.nodes)
    while pending:
        node = pending.pop()
        if node not in alive or node.users or node.op not in _CONSTANT_OPS:
            continue
        inputs = node.all_input_nodes
        graph.erase_node(node)
        alive.discard(node)
        pending.extend(inputs)
