"""Independent references for the service tests: onnxruntime run directly on the repository files."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def run_directly(entry: Path, variant: str, x: np.ndarray) -> np.ndarray:
    """Run NAME/<variant>.onnx with onnxruntime (no graph optimisation) outside the service."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(entry / f"{variant}.onnx"), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x})
    return np.asarray(logits)


def binary_request(
    x: np.ndarray, outputs: list[dict[str, Any]] | None = None, **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """A v2 request with `input` as binary tensor data: body and headers."""
    raw = x.astype("<f4").tobytes()
    document: dict[str, Any] = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(x.shape), "parameters": {"binary_data_size": len(raw)}}
        ],
        **extra,
    }
    if outputs is not None:
        document["outputs"] = outputs
    header = json.dumps(document).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def parse_binary_response(body: bytes, header_length: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON part and each output's array (binary ones decoded from the tail, JSON ones from data)."""
    document = json.loads(body[:header_length])
    offset = header_length
    arrays = {}
    for output in document["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[output["name"]] = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
            continue
        chunk = body[offset : offset + size]
        count = size // 4
        arrays[output["name"]] = np.array(struct.unpack(f"<{count}f", chunk), dtype=np.float32).reshape(output["shape"])
        offset += size
    assert offset == len(body), f"binary tail has {len(body) - offset} unread bytes"
    return document, arrays


def json_request(x: np.ndarray, nested: bool = False, **extra: Any) -> dict[str, Any]:
    data = x.tolist() if nested else x.reshape(-1).tolist()
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": data}], **extra}
