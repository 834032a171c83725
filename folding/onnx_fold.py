"""fold_onnx: fold every inference BatchNormalization of an ONNX model into its neighbours.

Constant sub-expressions are evaluated first (folding.onnx_constants), so a bias computed from constants
counts as a constant. Then each BN of the main graph goes through three passes:

1. into the previous layer (folding.onnx_previous), in graph order, so Conv → BN → BN folds both;
2. into the next layer (folding.onnx_next), in reverse graph order, so BN → BN → Conv folds both;
3. otherwise lowered to Mul + Add (folding.onnx_lower) when `lower_unfoldable`, or kept.

A BN that is not an inference BN (training_mode = 1, statistics not constant, …) is kept as it is, and so
is any BN inside a subgraph or a local function. The report gives every BN's fate and, for the ones not
folded, the reason. The input model is not modified and the same input gives byte-identical output.

Two entries, one fold. `fold_onnx_file(path)` folds a model file on the file path of folding.onnx_files:
the file is checked by path, its external tensors are memory-mapped, and the result is an onnx_ir model (its
unchanged tensors still mapped from the source's files, its folded ones numpy arrays) to write with
folding.onnx_files.save_model. `fold_onnx(proto)` folds an in-memory ModelProto; a proto the size rule sends
down the file path (external data, or inline tensors over 1 GiB: folding.onnx_files.by_file) is written to a
temporary directory with external data and folded from there, so it is never checked or serialised whole.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from numpy.typing import NDArray

from bnfold.folding.errors import FoldingError
from bnfold.folding.onnx_affine import find_affine_maps
from bnfold.folding.onnx_batchnorm import bn_name, read_batchnorm
from bnfold.folding.onnx_channel_map import AFFINE, BATCHNORM, ChannelMap
from bnfold.folding.onnx_constants import fold_constant_subexpressions
from bnfold.folding.onnx_files import by_file, check_external_files, load_lazy, save_model
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


@dataclass(frozen=True)
class OnnxFileFoldResult:
    """The source and the folded model as onnx_ir models, their tensors memory-mapped from the source's files
    where unchanged (the source file's directory must stay in place until they are written), and the report."""

    original: ir.Model
    model: ir.Model
    report: FoldReport

    def save(self, path: Path) -> Path | None:
        """Write the folded model as `path` with external data (folding.onnx_files.save_model) and check the
        written file by path; returns its data file (None when no tensor reaches 1 KiB)."""
        data = save_model(self.model, path, external=True)
        check_file(path, "bnfold produced an invalid model ({}); please report it")
        return data


def fold_onnx(
    model: onnx.ModelProto,
    example_inputs: Mapping[str, NDArray[np.generic]] | None = None,
    *,
    lower_unfoldable: bool = True,
) -> OnnxFoldResult:
    """Fold the BatchNormalization nodes of `model`; the input proto is left untouched.

    With `example_inputs` (one array per graph input) both models are run by onnxruntime with graph
    optimisations disabled, and each entry's max_error and the report's max_output_error are filled.
    A proto with external data (resolved as onnx does for a proto, relative to the working directory) or
    over 1 GiB of inline tensors goes through files (see the module docstring); its result has its tensors
    loaded.
    """
    if not isinstance(model, onnx.ModelProto):
        raise FoldingError(f"fold_onnx needs an onnx.ModelProto, got {type(model).__name__}; load it with onnx.load")
    if by_file(model):
        return _fold_through_files(model, example_inputs, lower_unfoldable)
    _check_input(model)
    working = onnx.ModelProto()
    working.CopyFrom(model)
    ir_model = ir.serde.deserialize_model(_without_legacy_initializer_inputs(working))
    report = _fold(ir_model, lower_unfoldable, ir.serde.deserialize_model(model), example_inputs)
    folded = ir.to_proto(ir_model)
    _check_output(folded)
    return OnnxFoldResult(model=folded, report=report)


def fold_onnx_file(
    path: Path,
    example_inputs: Mapping[str, NDArray[np.generic]] | None = None,
    *,
    lower_unfoldable: bool = True,
) -> OnnxFileFoldResult:
    """Fold the model file at `path` (external data resolved relative to it) on the file path: checked by
    path, tensors memory-mapped, measured without a copy of any weight (folding.onnx_files). The folded
    model is checked once written (`OnnxFileFoldResult.save`)."""
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # a missing file, or bytes that are no protobuf: onnx raises several types
        raise FoldingError(f"{path} is not a readable ONNX model (cannot parse it); give a .onnx file") from None
    try:
        check_external_files(path, proto)
    except ValueError as error:
        raise FoldingError(f"cannot load the external data of {path} ({error}); keep the data files where the "
                           "model names them, relative to the model file") from None  # fmt: skip
    check_file(path, "the input is not a valid ONNX model ({}); fix or re-export it")
    original = load_lazy(proto, path.parent)
    working = load_lazy(_without_legacy_initializer_inputs(proto), path.parent)
    report = _fold(working, lower_unfoldable, original, example_inputs)
    return OnnxFileFoldResult(original=original, model=working, report=report)


def check_file(path: Path, message: str) -> None:
    """onnx.checker on a model file, external data included (any size); FoldingError(message with the
    checker's first line) when it refuses."""
    try:
        onnx.checker.check_model(str(path))
    except Exception as error:  # the checker raises several types
        raise FoldingError(message.format(first_line(error))) from error


def _fold(
    ir_model: ir.Model,
    lower_unfoldable: bool,
    original: ir.Model,
    example_inputs: Mapping[str, NDArray[np.generic]] | None,
) -> FoldReport:
    """Fold `ir_model` in place; the report, measured against `original` when there are example inputs."""
    ranks, elem_types = infer_ranks(ir_model)
    fold_constant_subexpressions(ir_model)
    editor = GraphEditor(ir_model.graph, ranks, elem_types)
    plans = _fold_main_graph(editor, _onnx_opset(ir_model), lower_unfoldable)
    editor.restore_names()
    entries = [_entry(name, site, plan) for name, (site, plan) in plans.items()]
    entries += _nested_batchnorms(ir_model)
    report = FoldReport(entries=entries)
    if example_inputs is not None:
        probes = {name: plan.replacement for name, (_, plan) in plans.items() if plan.replacement is not None}
        report = measure_fold(original, ir_model, example_inputs, report, probes, editor.superseded)
    return report


def _fold_through_files(
    model: onnx.ModelProto, example_inputs: Mapping[str, NDArray[np.generic]] | None, lower_unfoldable: bool
) -> OnnxFoldResult:
    """A large or external-data proto: written with external data into a temporary directory, folded from
    there, the result written beside it, checked by path and read back with its tensors."""
    with tempfile.TemporaryDirectory(prefix="bnfold-fold-") as scratch:
        source, target = Path(scratch) / "input.onnx", Path(scratch) / "folded.onnx"
        save_model(ir.serde.deserialize_model(model), source, external=True)
        result = fold_onnx_file(source, example_inputs, lower_unfoldable=lower_unfoldable)
        result.save(target)
        try:
            folded = onnx.load_model(str(target))
        except Exception as error:  # protobuf refuses a tensor over 2 GiB
            raise FoldingError(
                f"the folded model cannot be held as one ModelProto ({first_line(error)}); fold its file with "
                "fold_onnx_file"
            ) from None
    return OnnxFoldResult(model=folded, report=result.report)


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


def _check_input(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model)
    except Exception as error:  # the checker raises several types
        raise FoldingError(f"the input is not a valid ONNX model ({first_line(error)}); fix or re-export it") from error


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
