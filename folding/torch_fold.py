"""`fold(model, example_inputs)`: fold every BatchNorm of a PyTorch model it can, and report each one.

Pipeline: deep-copy the model → capture it with torch.fx → run it once on the example inputs, recording
each BN's output (the reference) → for each BN in graph order fold it into the previous layer, else into
the next, else lower it to a per-channel scale/shift (or keep it) → a ConvTranspose that received a BN
becomes its SeparateBias subclass (same function, faster in eager mode: folding/torch_conv_transpose.py) →
run the folded graph → measure each BN's output against its replacement's, and the model output end to end.
After the BatchNorms, the fixed per-channel multiply/add chains next to a layer (FrozenBatchNorm2d traced
through, layer scales: folding/torch_affine.py) fold the same way; the report gives each its kind.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import fx, nn

from bnfold.folding.plan import Plan
from bnfold.folding.report import FoldEntry, FoldReport
from bnfold.folding.torch_affine import AffineSite, find_sites
from bnfold.folding.torch_affine import measured_nodes as affine_measured_nodes
from bnfold.folding.torch_affine_plan import decide_affine
from bnfold.folding.torch_batchnorm import describe_batchnorm, is_batchnorm_node
from bnfold.folding.torch_capture import capture, normalise_inputs, private_copy
from bnfold.folding.torch_conv_transpose import separate_bias
from bnfold.folding.torch_measure import Recording, output_error, record
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
    source = private_copy(model)
    graph_module = capture(source)
    batchnorms = [node for node in graph_module.graph.nodes if is_batchnorm_node(graph_module, node)]
    measured = _measured_nodes(graph_module, batchnorms) | affine_measured_nodes(graph_module.graph)
    reference = record(graph_module, inputs, measured)
    names: set[str] = set()
    plans = _fold_all(graph_module, batchnorms, reference.ndims, lower_unfoldable, names)
    sites = {site.site.name: site for site in find_sites(graph_module, source, reference, names)}
    _fold_affine(graph_module, sites, reference, plans)
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
    report = _report(plans, folded.errors, output_error(folded.output, reference.output))
    report.entries = [_with_kind(entry, sites.get(entry.bn)) for entry in report.entries]
    return FoldResult(graph_module, report)


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
    graph_module: fx.GraphModule,
    batchnorms: list[fx.Node],
    ndims: dict[str, int],
    lower_unfoldable: bool,
    names: set[str],
) -> dict[str, Plan]:
    """Decide every BN in graph order, by report name (collected in `names`)."""
    plans: dict[str, Plan] = {}
    for node in batchnorms:
        site = describe_batchnorm(graph_module, node, names)
        _add_plan(plans, site.name, decide(graph_module, site, ndims, lower_unfoldable))
    return plans


def _fold_affine(
    graph_module: fx.GraphModule, sites: dict[str, AffineSite], reference: Recording, plans: dict[str, Plan]
) -> None:
    """Decide every per-channel affine site after the BatchNorms, adding its plan to `plans`."""
    for name, site in sites.items():
        _add_plan(plans, name, decide_affine(graph_module, site, reference.ndims))


def _add_plan(plans: dict[str, Plan], name: str, plan: Plan) -> None:
    """Add `plan`; a later fold into the same node re-points earlier plans' references (conv → bn1 → bn2:
    bn1's output now exists only as bn2's output)."""
    for earlier in plans.values():
        if earlier.replacement == plan.replacement and earlier.decision.action.removes_batchnorm:
            earlier.reference = plan.reference
    plans[name] = plan


def _with_kind(entry: FoldEntry, site: AffineSite | None) -> FoldEntry:
    """A per-channel affine site's entry carries its kind and source ops; a BatchNorm's stays as it is."""
    return entry if site is None else replace(entry, kind=site.kind, sources=site.sources)


def _align_containers(graph_module: fx.GraphModule) -> None:
    """fx and add_submodule create plain `nn.Module()` containers for the paths of attributes they copy;
    give them the model's mode, so a model in eval mode has no module left in training mode."""
    for module in graph_module.modules():
        if type(module) is nn.Module:
            module.train(graph_module.training)


def _report(plans: dict[str, Plan], errors: dict[str, float | None], output: float | None) -> FoldReport:
    entries = [plan.decision.entry(bn, errors.get(str(plan.replacement))) for bn, plan in plans.items()]
    return FoldReport(entries=entries, max_output_error=output)
