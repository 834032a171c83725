"""fold_onnx: fold every inference BatchNormalization of an ONNX model into its neighbours.

Constant sub-expressions are evaluated first (folding.onnx_constants), so a bias computed from constants
counts as a constant. Then each BN of the main graph goes through three passes:

1. into the previous layer (folding.onnx_previous), in graph order, so Conv → BN → BN folds both;
2. into the next layer (folding.onnx_next), in reverse graph order, so BN → BN → Conv folds both;
3. otherwise lowered to Mul + Add (folding.onnx_lower) when `lower_unfoldable`, or kept.

A BN that is not an inference BN (training_mode = 1, statistics not constant, …) is kept as it is, and so
is any BN inside a subgraph or a local function. The report gives every BN's fate and, for the ones not
folded, the reason. The input model is not modified and the same input gives byte-identical output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from numpy.typing import NDArray

from bnfold.folding.errors import FoldingError
from bnfold.folding.onnx_affine import find_affine_maps
from bnfold.folding.onnx_batchnorm import bn_name, read_batchnorm
from bnfold.folding.onnx_channel_map import AFFINE, BATCHNORM, ChannelMap
from bnfold.folding.onnx_constants import fold_constant_subexpressions
from bnfold.folding.onnx_graph import GraphEditor, is_op
from bnfold.folding.onnx_lower import lower_batchnorm
from bnfold.folding.onnx_measure import measure_fold
from bnfold.folding.onnx_next import fold_into_next
from bnfold.folding.onnx_previous import fold_into_previous
from bnfold.folding.onnx_shapes import infer_ranks
from bnfold.folding.plan import ALREADY_MUL_ADD, LOWERING_DISABLED, Decision, Plan, Rewrite, not_folded, not_lowered
from bnfold.folding.report import Action, FoldEntry, FoldReport
from bnfold.messages import first_line


@dataclass(frozen=True)
class OnnxFoldResult:
    """The folded model (a new ModelProto) and the report of what happened to each BatchNorm."""

    model: onnx.ModelProto
    report: FoldReport


def fold_onnx(
    model: onnx.ModelProto,
    example_inputs: Mapping[str, NDArray[np.generic]] | None = None,
    *,
    lower_unfoldable: bool = True,
) -> OnnxFoldResult:
    """Fold the BatchNormalization nodes of `model`; the input proto is left untouched.

    With `example_inputs` (one array per graph input) both models are run by onnxruntime with graph
    optimisations disabled, and each entry's max_error and the report's max_output_error are filled.
    """
    working = _without_legacy_initializer_inputs(_valid_copy(model))
    ranks, elem_types = infer_ranks(working)
    ir_model = ir.from_proto(working)
    fold_constant_subexpressions(ir_model)
    editor = GraphEditor(ir_model.graph, ranks, elem_types)
    plans = _fold_main_graph(editor, _onnx_opset(ir_model), lower_unfoldable)
    editor.restore_names()
    folded = ir.to_proto(ir_model)
    _check_output(folded)
    entries = [_entry(name, site, plan) for name, (site, plan) in plans.items()]
    entries += _nested_batchnorms(ir_model)
    report = FoldReport(entries=entries)
    if example_inputs is not None:
        probes = {name: plan.replacement for name, (_, plan) in plans.items() if plan.replacement is not None}
        report = measure_fold(model, folded, example_inputs, report, probes, editor.superseded)
    return OnnxFoldResult(model=folded, report=report)


Candidate = ChannelMap | tuple[ir.Node, str]  # a map to fold, or a refused one: (its node, why)


def _fold_main_graph(editor: GraphEditor, opset: int, lower_unfoldable: bool) -> dict[str, tuple[Candidate, Plan]]:
    """The plan of every BN and per-channel affine map of the main graph, by report name, in graph order;
    a plan's reference and replacement are the probe, a value name present in both models."""
    candidates = _candidates(editor, opset)
    plans: dict[int, Plan] = {}
    readable = [(index, site) for index, site in enumerate(candidates) if isinstance(site, ChannelMap)]
    for index, site in enumerate(candidates):
        if isinstance(site, tuple):
            plans[index] = Plan(Decision.kept(site[1]))
    previous: dict[int, str] = {}
    for index, site in readable:
        _settle(plans, previous, index, fold_into_previous(editor, site), Action.FOLDED_INTO_PREVIOUS)
    following: dict[int, str] = {}
    for index, site in reversed([pair for pair in readable if pair[0] not in plans]):
        _settle(plans, following, index, fold_into_next(editor, site), Action.FOLDED_INTO_NEXT)
    for index, site in [pair for pair in readable if pair[0] not in plans]:
        reason = not_folded(previous[index], following[index])
        if site.kind == AFFINE:
            plans[index] = Plan(Decision.kept(not_lowered(reason, ALREADY_MUL_ADD)))
            continue
        lowered = lower_batchnorm(editor, site) if lower_unfoldable else LOWERING_DISABLED
        if isinstance(lowered, Rewrite):
            plans[index] = Plan(Decision.lowered(reason), lowered.probe, lowered.probe)
        else:
            plans[index] = Plan(Decision.kept(not_lowered(reason, lowered)))
    names = _report_names([_site_name(site) for site in candidates])
    return {name: (site, plans[index]) for index, (site, name) in enumerate(zip(candidates, names, strict=True))}


def _candidates(editor: GraphEditor, opset: int) -> list[Candidate]:
    """Every BatchNormalization and every per-channel Mul/Add map, in graph order; a refused one as
    (its node, the reason)."""
    found: list[Candidate] = []
    for node in editor.graph:
        if is_op(node, "BatchNormalization"):
            read = read_batchnorm(node, opset)
            found.append((node, read) if isinstance(read, str) else read)
    found += list(find_affine_maps(editor))
    position = {node: index for index, node in enumerate(editor.graph)}
    return sorted(found, key=lambda site: position[_first_node(site)])


def _first_node(site: Candidate) -> ir.Node:
    return site[0] if isinstance(site, tuple) else site.nodes[0]


def _site_name(site: Candidate) -> str:
    if isinstance(site, ChannelMap):
        return site.name
    node = site[0]
    return bn_name(node) if is_op(node, "BatchNormalization") else node.name or f"{node.op_type}→{node.outputs[0].name}"


def _entry(name: str, site: Candidate, plan: Plan) -> FoldEntry:
    if isinstance(site, ChannelMap):
        return plan.decision.entry(name, kind=site.kind, sources=site.sources)
    node = site[0]
    kind = BATCHNORM if is_op(node, "BatchNormalization") else AFFINE
    return plan.decision.entry(name, kind=kind, sources=(node.name or f"{node.op_type}→{node.outputs[0].name}",))


def _report_names(wanted: list[str]) -> list[str]:
    """The wanted names, made unique with a '#k' suffix: ONNX does not require node names to be unique."""
    names: list[str] = []
    for base in wanted:
        name, counter = base, 1
        while name in names:
            counter += 1
            name = f"{base}#{counter}"
        names.append(name)
    return names


def _settle(
    plans: dict[int, Plan], refusals: dict[int, str], index: int, outcome: str | Rewrite, action: Action
) -> None:
    """Record a successful fold, or the refusal of this side."""
    if isinstance(outcome, Rewrite):
        plans[index] = Plan(Decision.folded(action, outcome.target), outcome.probe, outcome.probe)
    else:
        refusals[index] = outcome


def _nested_batchnorms(ir_model: ir.Model) -> list[FoldEntry]:
    """BNs in subgraphs (If/Loop/Scan bodies) and local functions are reported as kept."""
    entries = []
    for node in ir.traversal.RecursiveGraphIterator(ir_model.graph):
        if is_op(node, "BatchNormalization") and node.graph is not ir_model.graph:
            entries.append(
                FoldEntry(bn_name(node), Action.KEPT, reason="inside a subgraph; only the main graph is folded")
            )
    for function in ir_model.functions.values():
        for node in function:
            if is_op(node, "BatchNormalization"):
                reason = f"inside local function {function.name!r}; only the main graph is folded"
                entries.append(FoldEntry(bn_name(node), Action.KEPT, reason=reason))
    return entries


def _onnx_opset(ir_model: ir.Model) -> int:
    imports = ir_model.opset_imports
    version = imports.get("", imports.get("ai.onnx"))
    if version is None:
        raise FoldingError("the model imports no default ONNX opset; it is not a valid ONNX model")
    return version


def _valid_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    if not isinstance(model, onnx.ModelProto):
        raise FoldingError(f"fold_onnx needs an onnx.ModelProto, got {type(model).__name__}; load it with onnx.load")
    try:
        onnx.checker.check_model(model)
    except Exception as error:  # the checker raises several types
        raise FoldingError(f"the input is not a valid ONNX model ({first_line(error)}); fix or re-export it") from error
    working = onnx.ModelProto()
    working.CopyFrom(model)
    return working


def _without_legacy_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """IR version < 4 requires every initializer to be listed as a graph input too, so there such an input is
    the model's weight, not an override point: drop it from the inputs and write IR version 4 (ONNX IR 4
    is the first where initializers need not be inputs; the operators and opset do not change)."""
    if model.ir_version >= 4:
        return model
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.ir_version = 4
    return model


def _check_output(folded: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(folded)
    except Exception as error:  # a bnfold bug, never the caller's
        raise FoldingError(f"bnfold produced an invalid model ({first_line(error)}); please report it") from error
