"""Service request overhead: V2 JSON and binary infer vs a bare ASGI POST handler on the same uvicorn.

Baseline of the serving benchmarks (target: V2 JSON throughput ≥ 40% of a bare ASGI POST handler on small models). One
client, keep-alive, sequential requests, timings interleaved (bench.common); the bare handler reads the same
request body and returns a fixed small JSON document. Prints a markdown table and saves
bench/results/service_baseline_<model>.json.

    .venv/bin/python -m bench.service_baseline --repository model_repository [--model breast_cancer_mlp]
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import uvicorn

from bench.bare_server import bare_post_handler
from bench.common import Summary, interleaved_timings, machine_description, markdown_table, save_results
from bnfold.service.app import create_app
from bnfold.service.settings import Settings

ASGIApp = Callable[..., Any]


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it every
    # response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, lifespan="auto"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code in (200, 404) and server.started:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def calibration_sample(repository: Path, model: str, batch: int) -> tuple[str, np.ndarray]:
    manifest = json.loads((repository / model / "model.json").read_text())
    name = manifest["inputs"][0]["name"]
    with np.load(repository / model / manifest["calibration"]["file"]) as archive:
        return name, np.ascontiguousarray(archive[name][:batch])


def requests_for(name: str, x: np.ndarray) -> tuple[bytes, bytes, dict[str, str]]:
    """(JSON body, binary body, binary headers) of one V2 request for input `name`."""
    item = {"name": name, "datatype": "FP32", "shape": list(x.shape)}
    json_body = json.dumps({"inputs": [{**item, "data": x.reshape(-1).tolist()}]}).encode()
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {"inputs": [{**item, "parameters": {"binary_data_size": len(raw)}}], "parameters": {"binary_data_output": True}}
    ).encode()
    return json_body, header + raw, {"Inference-Header-Content-Length": str(len(header))}


def measure(repository: Path, model: str, batch: int, repetitions: int) -> dict[str, Summary]:
    name, x = calibration_sample(repository, model, batch)
    json_body, binary_body, binary_headers = requests_for(name, x)
    session = ort.InferenceSession(str(repository / model / "folded.onnx"), providers=["CPUExecutionProvider"])
    settings = Settings(repository=repository, equivalence_policy="off")
    with serve(bare_post_handler) as bare, serve(create_app(settings)) as bnfold, httpx.Client() as client:
        infer = f"{bnfold}/v2/models/{model}/versions/folded/infer"
        runners: dict[str, Callable[[], object]] = {
            "onnxruntime session.run (in process)": lambda: session.run(None, {name: x}),
            "bare ASGI POST (same JSON body)": lambda: client.post(bare, content=json_body),
            "bnfold V2 JSON infer": lambda: client.post(infer, content=json_body),
            "bnfold V2 binary infer": lambda: client.post(infer, content=binary_body, headers=binary_headers),
        }
        samples = interleaved_timings(runners, repetitions=repetitions, warmup=20)
    return {label: Summary.of(values) for label, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="breast_cancer_mlp")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repetitions", type=int, default=500)
    args = parser.parse_args()
    summaries = measure(args.repository, args.model, args.batch, args.repetitions)
    bare = summaries["bare ASGI POST (same JSON body)"].median_ms
    rows = [
        (
            label,
            f"{s.median_ms:.3f}",
            f"{s.p10_ms:.3f}",
            f"{s.p90_ms:.3f}",
            f"{1000 / s.median_ms:.0f}",
            f"{bare / s.median_ms:.0%}",
        )
        for label, s in summaries.items()
    ]
    header = ("path", "median ms", "p10 ms", "p90 ms", "req/s (1 client)", "vs bare ASGI")
    print(f"model {args.model}, batch {args.batch}, {args.repetitions} interleaved repetitions\n")
    print(markdown_table(header, rows))
    payload = {
        "machine": machine_description(model=args.model, batch=args.batch, repetitions=args.repetitions),
        "results": {label: s.to_json() for label, s in summaries.items()},
    }
    print(f"\nsaved {save_results(f'service_baseline_{args.model}', payload)}")


if __name__ == "__main__":
    main()
