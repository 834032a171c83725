"""`fold(model, example_inputs)`: fold every BatchNorm of a PyTorch model it can, and report each one.

Pipeline: deep-copy the model → capture it with torch.fx → run it once on the example inputs, recording
each BN's output (the reference) → for each BN in graph order fold it into the previous layer, else into
the next, else lower it to a per-channel scale/shift (or keep it) → a ConvTranspose that received a BN
becomes its SeparateBias subclass (same function, faster in eager mode: folding/torch_conv_transpose.py) →
run the folded graph → measure each BN's output against its replacement's, and the model output end to end.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from bnfold.folding.plan import Plan
from bnfold.folding.report import FoldReport
from bnfold.folding.torch_batchnorm import describe_batchnorm, is_batchnorm_node
from bnfold.folding.torch_capture import capture, normalise_inputs, private_copy
from bnfold.folding.torch_conv_transpose import separate_bias
from bnfold.folding.torch_measure import output_error, record
from bnfold.folding.torch_plan import decide
from bnfold.folding.torch_rules import INTO_NEXT


@dataclass(frozen=True)
class FoldResult:
    """The folded model (a torch.fx GraphModule named like the original class) and its fold report."""

    model: fx.GraphModule
    report: FoldReport


def fold(model: nn.Module, example_inputs: object, *, lower_unfoldable: bool = True) -> FoldResult:
    """Fold the BatchNorms of `model` (eval mode expected) into neighbouring Conv/ConvTranspose/Linear layers.

    example_inputs: a tuple of tensors, one per forward argument (a bare tensor is accepted too); they fix
    nothing about shapes, the folded model accepts other batch sizes. lower_unfoldable: a BN with running
    statistics but no foldable neighbour becomes a ChannelScaleShift (y = s·x + t per channel) when True
    (the default), or is kept as a BatchNorm when False; either way the report gives the reason.
    The caller's model is never modified. Raises FoldingError when the model cannot be captured or run.
    """
    inputs = normalise_inputs(example_inputs)
    graph_module = capture(private_copy(model))
    batchnorms = [node for node in graph_module.graph.nodes if is_batchnorm_node(graph_module, node)]
    reference = record(graph_module, inputs, _measured_nodes(graph_module, batchnorms))
    plans = _fold_all(graph_module, batchnorms, reference.ndims, lower_unfoldable)
    for target in {p.decision.target for p in plans.values() if p.decision.target is not None}:
        separate_bias(graph_module.get_submodule(target))  # a fused ConvTranspose: eager fast path
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    _align_containers(graph_module)
    graph_module.recompile()
    compare = {
        str(p.replacement): reference.values[p.reference] for p in plans.values() if p.reference in reference.values
    }
    folded = record(graph_module, inputs, set(), compare)
    return FoldResult(graph_module, _report(plans, folded.errors, output_error(folded.output, reference.output)))


def _measured_nodes(graph_module: fx.GraphModule, batchnorms: list[fx.Node]) -> set[str]:
    """The nodes whose unfolded values the report needs: every BN, and every layer a BN may fold into
    forward (its output is then the BN's replacement)."""
    names = {node.name for node in batchnorms}
    for node in batchnorms:
        for user in node.users:
            if user.op == "call_module" and type(graph_module.get_submodule(str(user.target))) in INTO_NEXT:
                names.add(user.name)
    return names


def _fold_all(
    graph_module: fx.GraphModule, batchnorms: list[fx.Node], ndims: dict[str, int], lower_unfoldable: bool
) -> dict[str, Plan]:
    """Decide every BN in graph order, by report name; a later fold into a node re-points earlier plans'
    references."""
    names: set[str] = set()
    plans: dict[str, Plan] = {}
    for node in batchnorms:
        site = describe_batchnorm(graph_module, node, names)
        plan = decide(graph_module, site, ndims, lower_unfoldable)
        for earlier in plans.values():  # e.g. conv → bn1 → bn2: bn1's output now exists only as bn2's output
            if earlier.replacement == plan.replacement and earlier.decision.action.removes_batchnorm:
                earlier.reference = plan.reference
        plans[site.name] = plan
    return plans


def _align_containers(graph_module: fx.GraphModule) -> None:
    """fx and add_submodule create plain `nn.Module()` containers for the paths of attributes they copy;
    give them the model's mode, so a model in eval mode has no module left in training mode."""
    for module in graph_module.modules():
        if type(module) is nn.Module:
            module.train(graph_module.training)


def _report(plans: dict[str, Plan], errors: dict[str, float | None], output: float | None) -> FoldReport:
    entries = [plan.decision.entry(bn, errors.get(str(plan.replacement))) for bn, plan in plans.items()]
    return FoldReport(entries=entries, max_output_error=output)
