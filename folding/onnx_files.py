"""ONNX models too large for one protobuf message: which models take the file path, and how it reads, runs and
writes them.

A serialised protobuf message cannot exceed 2 GiB (onnx.checker.MAXIMUM_PROTOBUF), and onnx's Python protobuf
cannot even hold one tensor over 2 GiB in memory. So a model whose tensors may be that large is never held or
serialised as one message. **The rule** (`by_file`): a model takes the file path when any of its tensors is
stored as external data, or when its inline tensors exceed LARGE_MODEL_BYTES (1 GiB, half the limit, leaving
room for the graph and for the tensors a fold adds). The same path serves a 2 KB model with external data and
a 20 GB one, so the small external-data models of the tests exercise what the big ones need. On it:

- a file is checked by path (`onnx.checker.check_model(path)` reads the graph without the tensors' data and
  checks each external file), never by serialising the model; `check_external_files` first checks that every
  external tensor's bytes are there: a regular file inside the model's directory, with one hard link, long
  enough for the tensor;
- a file is opened lazily (`load_lazy`, onnx_ir): external tensors are memory-mapped and only the pages a fold
  reads are touched; a fold's new tensors are numpy arrays; nothing copies a whole weight into a protobuf;
- shape inference and onnxruntime get the graph without its large tensors' data (`light_proto`); onnxruntime
  receives those tensors as session initializers, OrtValues over the same memory (no copy);
- `save_model` writes a model inline (the caller's choice for a small one) or with external data: every
  initializer of at least SMALL_TENSOR_BYTES goes, in graph order, into one `<file>.data` beside `<file>`
  (streamed from the memory map or the array), and the graph file is written under a temporary name and
  renamed into place.

A small inline model stays one in-memory ModelProto (folding.onnx_fold.fold_onnx's in-memory path).
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from numpy.typing import NDArray

LARGE_MODEL_BYTES = 1 << 30  # half of onnx.checker.MAXIMUM_PROTOBUF (2 GiB - 1)
SMALL_TENSOR_BYTES = 1024  # tensors below this stay inline: shapes, axes, the statistics of narrow layers
DATA_SUFFIX = ".data"
PLACEHOLDER_LOCATION = "bnfold-fed-by-onnxruntime"  # an empty file: onnxruntime is given these tensors


def by_file(model: onnx.ModelProto) -> bool:
    """The rule: True when a tensor of `model` is stored as external data or its inline tensors exceed
    LARGE_MODEL_BYTES."""
    return has_external_data(model) or inline_tensor_bytes(model) > LARGE_MODEL_BYTES


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of `model` (graph, subgraphs, local functions) is stored as external data."""
    return any(_is_external(tensor) for tensor in _model_tensors(model))


def inline_tensor_bytes(model: onnx.ModelProto) -> int:
    """Serialised size of the main graph's initializers: the part of a model that can outgrow protobuf."""
    return sum(tensor.ByteSize() for tensor in model.graph.initializer)


def tensor_bytes(model: ir.Model) -> int:
    """Bytes of the main graph's initializers, wherever they are stored."""
    return sum(value.const_value.nbytes for value in model.graph.initializers.values() if value.const_value)


def check_external_files(path: Path, proto: onnx.ModelProto) -> None:
    """ValueError naming the tensor and the file unless every external tensor of `proto` (the model file at
    `path`, read without its external data) has its bytes in a regular file inside the file's directory,
    with one hard link (onnx_ir maps no other: a hard link can bring in a file from anywhere), long enough
    for the tensor's offset and length."""
    root = path.parent.resolve()
    for tensor in _model_tensors(proto):
        if not _is_external(tensor):
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        where = path.parent / location
        if not location or not where.resolve().is_relative_to(root) or os.path.isabs(location):
            raise ValueError(f"tensor {tensor.name!r} is stored in {location!r}, outside the model's directory")
        if not where.is_file():
            raise ValueError(f"tensor {tensor.name!r} is stored in {where}, which is not a regular file")
        status = where.stat()
        if status.st_nlink > 1:
            raise ValueError(
                f"tensor {tensor.name!r} is stored in {where}, which has {status.st_nlink} hard links (onnx_ir maps "
                "only files with one); copy the file"
            )
        offset = int(entries.get("offset", 0))
        elements = math.prod(tensor.dims)
        length = int(entries.get("length", math.ceil(elements * ir.DataType(tensor.data_type).bitwidth / 8)))
        if offset + length > status.st_size:
            raise ValueError(
                f"tensor {tensor.name!r} needs bytes {offset}…{offset + length} of {where}, which has "
                f"{status.st_size}: the data file is truncated or not this model's"
            )


def load_lazy(proto: onnx.ModelProto, directory: Path | str) -> ir.Model:
    """`proto` (read with load_external_data=False) as an onnx_ir model whose external tensors are memory-mapped
    from their files, resolved relative to `directory` (the model file's directory)."""
    model = ir.serde.deserialize_model(proto)
    ir.external_data.set_base_dir(model.graph, os.fspath(directory))
    return model


def light_proto(model: ir.Model) -> onnx.ModelProto:
    """`model` serialised without the data of its large initializers (`large_initializers`).

    In the proto each of them is an external reference to PLACEHOLDER_LOCATION, whose bytes are never read:
    shape inference reads no external data, and onnxruntime (which only checks that the file exists,
    `write_light`) is given the arrays themselves (`ort_initializers`)."""
    swapped = []
    try:
        for name, value in large_initializers(model).items():
            tensor = value.const_value
            assert tensor is not None
            swapped.append((value, tensor))
            value.const_value = ir.ExternalTensor(
                PLACEHOLDER_LOCATION, 0, tensor.nbytes, tensor.dtype, shape=ir.Shape(tensor.shape.numpy()), name=name
            )
        return ir.serde.serialize_model(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor


def large_initializers(model: ir.Model) -> dict[str, ir.Value]:
    """The main graph's initializers of at least SMALL_TENSOR_BYTES that onnxruntime can take as OrtValues
    (numeric, whole bytes per element; not also graph inputs, which IR < 4 allows), by name."""
    return {
        name: value
        for name, value in model.graph.initializers.items()
        if value.const_value is not None and not value.is_graph_input() and _fed_separately(value.const_value)
    }


def ort_initializers(model: ir.Model, proto: onnx.ModelProto) -> tuple[list[tuple[str, Any]], list[NDArray[Any]]]:
    """([(name, OrtValue)], arrays) of `model`'s large initializers, for SessionOptions.add_initializer with a
    session over `proto = light_proto(model)` opened from a file beside an empty PLACEHOLDER_LOCATION file
    (onnxruntime checks that the location exists, then takes the given tensor instead of reading it).

    add_initializer uses the OrtValue's memory as it is (add_external_initializers would copy it), and the
    OrtValue wraps its array without a copy and without a reference: the caller keeps `arrays` alive while
    the session exists. An array is the tensor's own memory (the memory map of its external data, or the
    fold's array) whenever that is contiguous; the OrtValue is typed by the proto's element type (bfloat16
    and float8 have no numpy dtype of their own)."""
    import onnxruntime as ort  # only running a model needs it

    types = {tensor.name: tensor.data_type for tensor in proto.graph.initializer}
    pairs, arrays = [], []
    for name, value in large_initializers(model).items():
        assert value.const_value is not None
        array: NDArray[Any] = np.ascontiguousarray(value.const_value.numpy())
        raw = array.view(np.dtype(f"u{array.dtype.itemsize}")) if array.dtype.kind == "V" else array
        arrays.append(raw)
        pairs.append((name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, types[name])))
    return pairs, arrays


def write_light(proto: onnx.ModelProto, directory: Path) -> Path:
    """Write `proto = light_proto(…)` as directory/model.onnx beside an empty PLACEHOLDER_LOCATION file (never
    read: onnxruntime is given those tensors) and return its path."""
    (directory / PLACEHOLDER_LOCATION).touch()
    path = directory / "model.onnx"
    onnx.save_model(proto, path)
    return path


def save_model(model: ir.Model, path: Path, external: bool) -> Path | None:
    """Write `model` as `path` (renamed into place from a temporary name); with `external`, every initializer of
    at least SMALL_TENSOR_BYTES goes into `path.name + DATA_SUFFIX` beside it. Returns the data file, or None when
    none was written. The model is unchanged; external tensors are streamed from their files."""
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    location = path.name + DATA_SUFFIX
    try:
        if external:
            ir.save(model, temporary, external_data=location, size_threshold_bytes=SMALL_TENSOR_BYTES - 1)
        else:
            onnx.save_model(ir.serde.serialize_model(model), temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    data = path.with_name(location)
    if not external:
        return None
    if data.exists() and data.stat().st_size == 0:  # no tensor was large enough (ir.save still makes the file)
        data.unlink()
    return data if data.exists() else None


def _fed_separately(tensor: ir.TensorProtocol) -> bool:
    """Large numeric tensors of whole bytes: the ones onnxruntime can take as OrtValues."""
    return tensor.nbytes >= SMALL_TENSOR_BYTES and tensor.dtype != ir.DataType.STRING and tensor.dtype.bitwidth % 8 == 0


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a model: its graph's and its local functions'."""
    yield from _tensors(model.graph.initializer, model.graph.sparse_initializer, model.graph.node)
    for function in model.functions:
        yield from _tensors((), (), function.node)


def _tensors(
    initializers: Iterable[onnx.TensorProto], sparse: Iterable[onnx.SparseTensorProto], nodes: Iterable[onnx.NodeProto]
) -> Iterator[onnx.TensorProto]:
    """Initializers, sparse initializers and the tensor attributes of `nodes`, subgraphs included."""
    yield from initializers
    for tensor in sparse:
        yield tensor.values
        yield tensor.indices
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
            for tensor in attribute.sparse_tensors:
                yield from (tensor.values, tensor.indices)
            for graph in [attribute.g] if attribute.HasField("g") else []:
                yield from _tensors(graph.initializer, graph.sparse_initializer, graph.node)
            for graph in attribute.graphs:
                yield from _tensors(graph.initializer, graph.sparse_initializer, graph.node)
