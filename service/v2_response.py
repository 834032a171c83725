"""Encode a v2 infer response: requested outputs, JSON data or binary tensor data, id and parameters.

An output is sent binary when it asks `parameters.binary_data: true`, or when it says nothing and the
request-level `parameters.binary_data_output` is true. Binary outputs carry `parameters.binary_data_size`,
no `data`, and their bytes follow the JSON in output order; the JSON length goes in the
`Inference-Header-Content-Length` response header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.datatypes import v2_name
from service.errors import BadRequestError


@dataclass(frozen=True)
class OutputRequest:
    """Which outputs to return and which of them as binary data."""

    names: list[str]
    binary: dict[str, bool] = field(default_factory=dict)


def requested_outputs(document: dict[str, Any], available: list[str]) -> OutputRequest:
    """Parse `outputs` (default: all, in model order) and the binary flags of the request."""
    parameters = document.get("parameters") or {}
    default_binary = bool(isinstance(parameters, dict) and parameters.get("binary_data_output", False))
    items = document.get("outputs")
    if items is None:
        return OutputRequest(list(available), {name: default_binary for name in available})
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise BadRequestError("'outputs' must be a list of objects like {\"name\": ...}")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for item in items:
        name = item.get("name")
        if name not in available:
            raise BadRequestError(f"unknown output {name!r}; the model's outputs are {available}")
        flags = item.get("parameters") or {}
        flag = flags.get("binary_data") if isinstance(flags, dict) else None
        names.append(name)
        binary[name] = default_binary if flag is None else bool(flag)
    return OutputRequest(names, binary)


def encode(header: dict[str, Any], outputs: dict[str, np.ndarray], request: OutputRequest) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header length."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name in request.names:
        array = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": v2_name(array.dtype), "shape": list(array.shape)}
        if request.binary.get(name, False):
            raw = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    document = json.dumps({**header, "outputs": entries}, separators=(",", ":"), ensure_ascii=False).encode()
    if not chunks:
        return document, None
    return document + b"".join(chunks), len(document)
