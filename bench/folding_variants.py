"""The network variants that bench/folding_speedup.py times, their ONNX exports and onnxruntime sessions.

Variants of one network (all in eval mode):

- ``unfolded``: the network as given;
- ``folded``: ``folding.fold(unfolded, example).model``;
- ``bn_deleted``: every BatchNorm removed, the best folding can possibly do.

All three are torch.fx GraphModules (``fold`` returns one; the other two are traced here, and the
nn.Identity modules that ``delete_batchnorm`` put in place of the BatchNorms are dropped from the graph,
the network's own Identity modules are not), so in eager mode they differ only in their BatchNorms, not in
Python call overhead: tracing flattens the nested Sequential/block calls.

``ort_optimised_op_count`` tells how many BatchNormalization nodes onnxruntime's own default-level
optimiser leaves in a graph: it fuses Conv+BN itself when the conv's weight and bias are constants.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import fx, nn

from bnfold.folding.compare import Tolerance, discrepancy
from bnfold.folding.export import count_op, export_onnx
from tests.nets.batchnorm_variants import batchnorm_modules, delete_batchnorm

VARIANTS = ("unfolded", "folded", "bn_deleted")
INPUT_NAME, OUTPUT_NAME = "input", "output"
# Folded vs unfolded outputs must agree within this (scale-relative, folding/compare.py).
OUTPUT_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4)


def build_variants(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """The modules of VARIANTS, and the fold summary with each variant's BN module count."""
    from bnfold.folding import fold

    result = fold(model, (example,))
    models: dict[str, nn.Module] = {
        "unfolded": fx.symbolic_trace(model),
        "folded": result.model,
        "bn_deleted": without_calls_of(fx.symbolic_trace(delete_batchnorm(model)), _batchnorm_names(model)),
    }
    for variant in models.values():
        variant.eval()
    info = {
        "fold_summary": result.report.summary(),
        "batchnorm_modules": {name: len(batchnorm_modules(m)) for name, m in models.items()},
    }
    return models, info


def _batchnorm_names(model: nn.Module) -> set[str]:
    return {name for name, _ in batchnorm_modules(model)}


def without_calls_of(graph_module: fx.GraphModule, names: set[str]) -> fx.GraphModule:
    """Remove every call of the nn.Identity submodules called `names` (the ones that replaced BatchNorms;
    the network's own Identity modules, such as a ResNet's identity shortcut, stay as in the other
    variants): their users read their input instead."""
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and str(node.target) in names:
            assert isinstance(graph_module.get_submodule(str(node.target)), nn.Identity)
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


def export_variants(models: dict[str, nn.Module], example: torch.Tensor) -> dict[str, onnx.ModelProto]:
    """export_onnx (dynamo, optimize=False) of every variant, input 'input', output 'output'."""
    return {
        name: export_onnx(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
        for name, model in models.items()
    }


def session_options(threads: int, *, optimise: bool = True) -> ort.SessionOptions:
    """`threads` intra-op threads, 1 inter-op thread, no spinning; default optimisation level unless not `optimise`.

    Spinning is off because the sessions of the variants run alternately: an idle pool that spins after
    its run steals a core from the next session (interleaved ResNet-18 batch 1 on 2 cores: 55–66 ms with
    spinning, 12–24 ms without). Each session's pool then sleeps between runs, for every variant alike.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def ort_session(proto: onnx.ModelProto, threads: int, *, optimise: bool = True) -> ort.InferenceSession:
    """A CPU session at onnxruntime's default optimisation level (or none, for reference runs)."""
    options = session_options(threads, optimise=optimise)
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_optimised_op_count(proto: onnx.ModelProto, threads: int, op_type: str = "BatchNormalization") -> int:
    """How many `op_type` nodes remain after onnxruntime's default graph optimisation of `proto`."""
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as directory:
        options = session_options(threads)
        options.optimized_model_filepath = str(Path(directory) / "optimised.onnx")
        options.log_severity_level = 3  # the "hardware-specific NCHWc graph" warning is expected here
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return count_op(onnx.load(options.optimized_model_filepath), op_type)


def output_errors(
    models: dict[str, nn.Module],
    sessions: dict[str, ort.InferenceSession],
    reference: ort.InferenceSession,
    x: torch.Tensor,
) -> dict[str, dict[str, Any]]:
    """Folded vs unfolded: torch eager vs torch eager; ORT (default level) vs unfolded ORT_DISABLE_ALL."""
    with torch.inference_mode():
        torch_pair = (models["folded"](x).numpy(), models["unfolded"](x).numpy())
    feed = {INPUT_NAME: x.numpy()}
    ort_pair = (sessions["folded"].run(None, feed)[0], reference.run(None, feed)[0])
    errors: dict[str, dict[str, Any]] = {}
    for runtime, (candidate, expected) in (("torch", torch_pair), ("onnxruntime", ort_pair)):
        found = discrepancy(candidate, expected)
        errors[runtime] = {"max_abs": found.max_abs, "max_rel": found.max_rel, "ok": found.within(OUTPUT_TOLERANCE)}
    return errors
