"""Export a PyTorch model to ONNX with its BatchNorm layers kept, and count ops in an ONNX graph.

The dynamo exporter is used with `optimize=False`: with `optimize=True` (and with the legacy exporter in
eval mode) Conv + BatchNormalization is fused behind the caller's back, and the "unfolded" reference would
no longer contain the BN it is meant to prove equivalent to. Axis 0 of every input and output is a dynamic
batch dimension named "batch".

Constant sub-expressions the exporter leaves in place (a `bias=False` conv gets the zero bias
Expand(CastLike(0, x), Shape(W))) are evaluated to initializers, BatchNormalization excluded
(folding.onnx_constants): the unfolded reference then differs from the folded model only by its BNs.

The result is deterministic (the same model gives a byte-identical proto): the exporter's per-node
metadata that records source file paths and line numbers is removed, the rest is kept.

The export is checked with onnx.checker (full check) in memory, or, when the size rule of folding.onnx_files
sends it down the file path (over 1 GiB of tensors), by path: written with external data to a temporary
directory, so that no message near protobuf's 2 GiB limit is serialised.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from torch import Tensor, nn

from bnfold.contract.op_count import count_op
from bnfold.folding.errors import FoldingError
from bnfold.folding.onnx_constants import fold_constant_subexpressions
from bnfold.folding.onnx_files import by_file, save_model
from bnfold.messages import first_line

__all__ = ["BATCH_DIM", "count_op", "export_onnx"]

BATCH_DIM = "batch"
# Node metadata that embeds source paths / line numbers: machine-dependent, so it is dropped.
_VOLATILE_METADATA = frozenset({"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node"})


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[Tensor, ...],
    *,
    input_names: list[str],
    output_names: list[str],
    opset: int | None = None,
) -> onnx.ModelProto:
    """Export `model` (in eval mode) to an ONNX ModelProto that keeps every BatchNormalization node.

    Raises FoldingError with a one-line cause and fix when the model is in training mode, the names do
    not match the inputs, the exporter fails, or the result is not a valid ONNX model with a dynamic
    batch axis on every input and output.
    """
    _check_arguments(model, example_inputs, input_names, output_names)
    program = _run_exporter(model, example_inputs, input_names, output_names, opset)
    proto = _without_constant_subexpressions(program.model_proto)
    _drop_volatile_metadata(proto)
    _check_dynamic_batch(proto)
    try:
        _full_check(proto)
    except Exception as error:  # checker raises several exception types
        raise FoldingError(
            f"the exported ONNX model is invalid ({first_line(error)}); try another opset with opset=…"
        ) from error
    return proto


def _full_check(proto: onnx.ModelProto) -> None:
    """onnx.checker's full check, in memory or by path (the size rule, folding.onnx_files.by_file)."""
    if not by_file(proto):
        onnx.checker.check_model(proto, full_check=True)
        return
    with tempfile.TemporaryDirectory(prefix="bnfold-export-") as scratch:
        path = Path(scratch) / "exported.onnx"
        save_model(ir.serde.deserialize_model(proto), path, external=True)
        onnx.checker.check_model(str(path), full_check=True)


def _check_arguments(
    model: nn.Module, example_inputs: tuple[Tensor, ...], input_names: list[str], output_names: list[str]
) -> None:
    if not isinstance(model, nn.Module):
        raise FoldingError(f"export_onnx needs a torch.nn.Module, got {type(model).__name__}")
    training = [name or "<root>" for name, module in model.named_modules() if module.training]
    if training:
        raise FoldingError(
            f"module {training[0]!r} is in training mode, so its BatchNorm output would not match the export; "
            "call model.eval() before export_onnx"
        )
    if not isinstance(example_inputs, tuple) or not all(isinstance(t, Tensor) for t in example_inputs):
        raise FoldingError("example_inputs must be a tuple of tensors, e.g. (torch.randn(2, 3, 32, 32),)")
    if len(input_names) != len(example_inputs):
        raise FoldingError(
            f"{len(input_names)} input_names for {len(example_inputs)} example inputs; give one name per input"
        )
    if any(t.dim() == 0 for t in example_inputs):
        raise FoldingError("an example input is a scalar; every input needs a leading batch axis")
    if len(set(input_names) | set(output_names)) != len(input_names) + len(output_names):
        raise FoldingError(f"input and output names must be distinct: {input_names} / {output_names}")


def _run_exporter(
    model: nn.Module,
    example_inputs: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    opset: int | None,
) -> torch.onnx.ONNXProgram:
    batch = torch.export.Dim(BATCH_DIM)
    dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    try:
        program = torch.onnx.export(
            model,
            example_inputs,
            dynamo=True,
            optimize=False,  # True would fuse Conv + BatchNormalization
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )
    except Exception as error:  # the exporter raises many unrelated types; all mean "cannot capture"
        raise FoldingError(
            f"torch.onnx.export could not capture {type(model).__name__} ({first_line(error)}); make forward "
            "traceable by torch.export (no data-dependent Python control flow) and check the example inputs"
        ) from error
    if program is None or program.model_proto is None:
        raise FoldingError("torch.onnx.export returned no model; upgrade torch or report the model")
    return program


def _without_constant_subexpressions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate constant sub-expressions (BatchNormalization excluded) and check that no BN was lost."""
    ir_model = ir.from_proto(proto)
    fold_constant_subexpressions(ir_model)
    cleaned = ir.to_proto(ir_model)
    if count_op(cleaned) != count_op(proto):
        raise FoldingError(
            f"constant folding changed the BatchNormalization count ({count_op(proto)} → {count_op(cleaned)}); "
            "please report this model"
        )
    return cleaned


def _drop_volatile_metadata(proto: onnx.ModelProto) -> None:
    for node in proto.graph.node:
        kept = [entry for entry in node.metadata_props if entry.key not in _VOLATILE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def _check_dynamic_batch(proto: onnx.ModelProto) -> None:
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            raise FoldingError(
                f"ONNX {value.name!r} has no dynamic batch axis 0; the model must keep the batch axis "
                "first in every input and output (no reduction or reshape over the batch)"
            )
