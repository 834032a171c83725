"""External data of an entry's ONNX files: which files a graph loads besides itself, and the rules they obey.

An ONNX tensor whose `data_location` is EXTERNAL keeps its bytes in another file, named by the `location` key
of its `external_data` list and resolved relative to the ONNX file's directory (onnx and onnxruntime alike).
Every such file is part of the entry and covered by model.json (`variants.*.external_data`, each with its
SHA-256). A location is refused unless it is a relative path without `..` that resolves (symlinks followed)
inside the entry directory to a regular file.

The locations are read from the protobuf wire format directly (no onnx import: the service has none). The
walk visits every TensorProto onnxruntime could load: graph initializers, sparse initializers, Constant-style
node attributes (`t`, `tensors`, `sparse_tensor(s)`), subgraphs (`g`, `graphs`) and local functions.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Protocol

from bnfold.contract.errors import ContractError
from bnfold.contract.hashing import sha256_file

# Field numbers of onnx.proto (onnx/onnx.proto3).
MODEL_GRAPH, MODEL_FUNCTIONS = 7, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_ATTRIBUTE, FUNCTION_NODE = 5, 7
ATTRIBUTE_T, ATTRIBUTE_G, ATTRIBUTE_TENSORS, ATTRIBUTE_GRAPHS = 5, 6, 10, 11
ATTRIBUTE_SPARSE_TENSOR, ATTRIBUTE_SPARSE_TENSORS = 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class ExternalReference:
    """One tensor whose bytes live in the file `location` (relative to the ONNX file's directory)."""

    tensor: str
    location: str


class MalformedOnnx(ContractError):
    """The bytes are not a protobuf message at all (truncated, or an impossible wire type)."""


class DeclaredFile(Protocol):
    """A file model.json lists with its digest (`ExternalDataSpec`)."""

    file: str
    sha256: str


def external_references(onnx_bytes: bytes) -> list[ExternalReference]:
    """Every external-data reference of a serialized ModelProto, in file order; ContractError if malformed."""
    found: list[ExternalReference] = []
    model = memoryview(onnx_bytes)
    for number, value in _messages(model):
        if number == MODEL_GRAPH:
            _graph(value, found)
        elif number == MODEL_FUNCTIONS:
            _nodes(value, FUNCTION_NODE, found)
    return found


def check_external_data(
    directory: Path, onnx_file: str, onnx_bytes: bytes, declared: Sequence[DeclaredFile], where: str
) -> None:
    """ContractError unless every file `onnx_file` refers to is declared in model.json (at `where`), every
    declared file lies inside `directory` as a regular file, and its SHA-256 is the declared one.

    Bytes that are no protobuf message at all load nothing: no protobuf parser, onnx's or onnxruntime's,
    accepts them, so the check of the declared files runs and the loader's own message names the damage."""
    listed = {spec.file: spec for spec in declared}
    try:
        references = external_references(onnx_bytes)
    except MalformedOnnx:
        references = []
    for reference in references:
        if reference.location not in listed:
            raise ContractError(
                f"{onnx_file} loads tensor {reference.tensor!r} from {reference.location!r}, which model.json does "
                f"not list under {where}: its bytes are not covered by a SHA-256; rebuild the entry"
            )
    for spec in declared:
        path = resolve_location(directory, spec.file, onnx_file)
        actual = sha256_file(path)
        if actual != spec.sha256.lower():
            raise ContractError(
                f"sha256 of {spec.file} is {actual[:16]}..., model.json says {spec.sha256[:16]}...: "
                "the file was truncated or replaced; rebuild the entry"
            )


def resolve_location(directory: Path, location: str, onnx_file: str) -> Path:
    """The regular file `location` names inside `directory`; ContractError naming the rule it breaks."""
    refused = f"{onnx_file}'s external data {location!r}"
    if not location:
        raise ContractError(f"{onnx_file} has a tensor stored externally with no location; rebuild the entry")
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute() or "\\" in location:
        raise ContractError(f"{refused} is an absolute path; external data must be a file inside the entry directory")
    if ".." in PurePosixPath(location).parts:
        raise ContractError(f"{refused} contains '..'; external data must be a file inside the entry directory")
    root = directory.resolve()
    path = (directory / location).resolve()
    if not path.is_relative_to(root):
        raise ContractError(f"{refused} resolves outside the entry directory (a symlink); copy the file into the entry")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ContractError(f"{refused} is missing; rebuild the entry with bnfold fold-and-export") from None
    if not stat.S_ISREG(mode):
        raise ContractError(f"{refused} is not a regular file; external data must be a regular file")
    return path


def _graph(graph: memoryview, found: list[ExternalReference]) -> None:
    for number, value in _messages(graph):
        if number == GRAPH_INITIALIZER:
            _tensor(value, found)
        elif number == GRAPH_SPARSE_INITIALIZER:
            _sparse(value, found)
        elif number == GRAPH_NODE:
            _node(value, found)


def _nodes(message: memoryview, field: int, found: list[ExternalReference]) -> None:
    for number, value in _messages(message):
        if number == field:
            _node(value, found)


def _node(node: memoryview, found: list[ExternalReference]) -> None:
    for number, attribute in _messages(node):
        if number != NODE_ATTRIBUTE:
            continue
        for field, value in _messages(attribute):
            if field in (ATTRIBUTE_T, ATTRIBUTE_TENSORS):
                _tensor(value, found)
            elif field in (ATTRIBUTE_SPARSE_TENSOR, ATTRIBUTE_SPARSE_TENSORS):
                _sparse(value, found)
            elif field in (ATTRIBUTE_G, ATTRIBUTE_GRAPHS):
                _graph(value, found)


def _sparse(sparse: memoryview, found: list[ExternalReference]) -> None:
    for number, value in _messages(sparse):
        if number in (SPARSE_VALUES, SPARSE_INDICES):
            _tensor(value, found)


def _tensor(tensor: memoryview, found: list[ExternalReference]) -> None:
    name, location, data_location = "", "", 0
    for number, wire, value in _fields(tensor):
        if number == TENSOR_NAME and isinstance(value, memoryview):
            name = _text(value)
        elif number == TENSOR_DATA_LOCATION and wire == VARINT and isinstance(value, int):
            data_location = value
        elif number == TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            entry = {key: _text(text) for key, text in _messages(value)}
            if entry.get(ENTRY_KEY) == "location":
                location = entry.get(ENTRY_VALUE, "")
    if data_location == EXTERNAL:
        found.append(ExternalReference(name, location))


def _messages(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(field number, bytes) of the length-delimited fields of one message."""
    for number, _, value in _fields(data):
        if isinstance(value, memoryview):
            yield number, value


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one protobuf message; fixed-width values are skipped."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, position = _varint(data, position)
            yield number, wire, value
        elif wire == LENGTH_DELIMITED:
            length, position = _varint(data, position)
            if position + length > end:
                raise MalformedOnnx("the ONNX file is truncated (a field runs past its end); rebuild the entry")
            yield number, wire, data[position : position + length]
            position += length
        elif wire in (FIXED64, FIXED32):
            position += 8 if wire == FIXED64 else 4
        elif wire == START_GROUP:  # a deprecated group (not in onnx.proto, but valid protobuf): skipped
            position = _skip_group(data, position, number)
        else:
            raise MalformedOnnx(f"the ONNX file is not a valid protobuf (wire type {wire}); rebuild the entry")
    if position > end:
        raise MalformedOnnx("the ONNX file is truncated (a fixed-width field runs past its end); rebuild the entry")


def _skip_group(data: memoryview, position: int, number: int) -> int:
    """The position after the END_GROUP that closes group `number`, whose fields start at `position`."""
    while True:
        key, position = _varint(data, position)
        field, wire = key >> 3, key & 7
        if wire == END_GROUP:
            if field != number:
                raise MalformedOnnx("the ONNX file is not a valid protobuf (unbalanced group); rebuild the entry")
            return position
        if wire == VARINT:
            _, position = _varint(data, position)
        elif wire == LENGTH_DELIMITED:
            length, position = _varint(data, position)
            position += length
        elif wire in (FIXED64, FIXED32):
            position += 8 if wire == FIXED64 else 4
        elif wire == START_GROUP:
            position = _skip_group(data, position, field)
        else:
            raise MalformedOnnx(f"the ONNX file is not a valid protobuf (wire type {wire}); rebuild the entry")
        if position > len(data):
            raise MalformedOnnx("the ONNX file is truncated (a field runs past its end); rebuild the entry")


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise MalformedOnnx("the ONNX file is truncated (an unfinished varint); rebuild the entry")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8", errors="replace")
