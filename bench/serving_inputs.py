"""What the serving benchmark sends and its references: V2 requests built from a repository entry's calibration
sample, a check of the service's answers against onnxruntime run in process, and the in-process limits.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.grpc_load import infer_once, infer_request
from bench.http_load import http_request, send_once
from bnfold.service.runtime import SessionConfig, session_options


@dataclass(frozen=True)
class ModelRequests:
    """batch-1 (or batch-n) input of one model and its V2 requests, JSON and binary, as bytes."""

    model: str
    entry: Path
    inputs: dict[str, np.ndarray]
    json: bytes
    binary: bytes
    grpc: bytes  # a serialised ModelInferRequest with raw_input_contents (for the gRPC port)


def calibration_inputs(entry: Path, batch: int = 1) -> dict[str, np.ndarray]:
    """The first `batch` calibration samples of every input of the entry."""
    with np.load(entry / "calibration.npz") as archive:
        return {name: np.ascontiguousarray(archive[name][:batch]) for name in archive.files}


def model_requests(repository: Path, model: str, batch: int = 1, version: str | None = None) -> ModelRequests:
    """Requests for the default variant, or for `version` (folded / unfolded)."""
    entry = repository / model
    manifest = json.loads((entry / "model.json").read_text())
    inputs = calibration_inputs(entry, batch)
    path = f"/v2/models/{model}/infer" if version is None else f"/v2/models/{model}/versions/{version}/infer"
    datatypes = {s["name"]: s["datatype"] for s in manifest["inputs"]}
    items = [
        {"name": s["name"], "datatype": s["datatype"], "shape": list(inputs[s["name"]].shape)}
        for s in manifest["inputs"]
    ]
    as_json = {"inputs": [{**item, "data": inputs[item["name"]].ravel().tolist()} for item in items]}
    tails = [inputs[item["name"]].tobytes() for item in items]
    as_binary = {
        "inputs": [
            {**item, "parameters": {"binary_data_size": len(tail)}} for item, tail in zip(items, tails, strict=True)
        ],
        "parameters": {"binary_data_output": True},
    }
    header = json.dumps(as_binary).encode()
    binary_headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return ModelRequests(
        model,
        entry,
        inputs,
        http_request(path, json.dumps(as_json).encode(), {"Content-Type": "application/json"}),
        http_request(path, header + b"".join(tails), binary_headers),
        infer_request(model, {item["name"]: inputs[item["name"]] for item in items}, datatypes),
    )


def folded_session(entry: Path, intra_threads: int, variant: str = "folded") -> ort.InferenceSession:
    """A session with the service's own pinned options for that variant."""
    level = "all" if variant == "folded" else "disable"
    options = session_options(SessionConfig(intra_threads, 1, level))
    return ort.InferenceSession(str(entry / f"{variant}.onnx"), options, providers=["CPUExecutionProvider"])


def check_answers(port: int, requests: ModelRequests, grpc_port: int | None = None) -> None:
    """AssertionError/RuntimeError unless the JSON and binary (and gRPC, when its port is given) answers equal
    onnxruntime in process (within 1e-4 relative)."""
    expected = folded_session(requests.entry, 1).run(None, requests.inputs)[0]
    for kind, request in (("json", requests.json), ("binary", requests.binary)):
        status, body = send_once(port, request)
        if status != 200:
            raise RuntimeError(f"{requests.model} {kind}: status {status}: {body[:300]!r}")
        np.testing.assert_allclose(_first_output(body, kind), expected, rtol=1e-4, atol=1e-5)
    if grpc_port is not None:
        response = infer_once(grpc_port, requests.grpc)
        output = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(response.outputs[0].shape)
        np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)


def _first_output(body: bytes, kind: str) -> np.ndarray:
    if kind == "json":
        output = json.loads(body)["outputs"][0]
        return np.asarray(output["data"], np.float32).reshape(output["shape"])
    # The JSON header ends where its object ends (latin-1 keeps character and byte offsets equal).
    document, header_end = json.JSONDecoder().raw_decode(body.decode("latin-1"))
    output = document["outputs"][0]
    size = output["parameters"]["binary_data_size"]
    return np.frombuffer(body[header_end : header_end + size], np.float32).reshape(output["shape"])


def in_process_limits(entry: Path, intra_threads: int, batch: int, seconds: float = 2.0) -> dict[str, Any]:
    """onnxruntime in process on the folded model: sequential latency (p50) and throughput with one thread
    per core running `batch`-sample runs (samples per second)."""
    session = folded_session(entry, intra_threads)
    inputs = calibration_inputs(entry, batch)
    if min(array.shape[0] for array in inputs.values()) < batch:
        inputs = {name: np.repeat(array, -(-batch // array.shape[0]), axis=0)[:batch] for name, array in inputs.items()}
    for _ in range(5):
        session.run(None, inputs)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline or len(latencies) < 20:
        start = time.perf_counter()
        session.run(None, inputs)
        latencies.append(time.perf_counter() - start)
    return {
        "batch": batch,
        "p50_ms": statistics.median(latencies) * 1000,
        "throughput_sps": _threaded_throughput(session, inputs, os.cpu_count() or 1, seconds / 2) * batch,
    }


def _threaded_throughput(
    session: ort.InferenceSession, inputs: dict[str, np.ndarray], threads: int, seconds: float
) -> float:
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            session.run(None, inputs)
            counts[index] += 1

    workers = [threading.Thread(target=loop, args=(index,)) for index in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)
