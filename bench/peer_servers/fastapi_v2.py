"""A naive V2 inference server, the ~40 lines a user writes instead of adopting a serving framework:
FastAPI, a pydantic request body, numpy, session.run, uvicorn[standard] (uvloop + httptools).

    python -m bench.peer_servers.fastapi_v2 --model path/to/folded.onnx --name digits_resnet --port 8001
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


class Tensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


def build_app(session: ort.InferenceSession, model_name: str) -> FastAPI:
    app = FastAPI()

    @app.post(f"/v2/models/{model_name}/infer")
    async def infer(request: InferRequest) -> dict:
        feeds = {t.name: np.asarray(t.data, DTYPES[t.datatype]).reshape(t.shape) for t in request.inputs}
        results = session.run(None, feeds)
        outputs = [
            {"name": meta.name, "datatype": "FP32", "shape": list(value.shape), "data": value.ravel().tolist()}
            for meta, value in zip(session.get_outputs(), results, strict=True)
        ]
        return {"model_name": model_name, "outputs": outputs}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as bnfold serve on a multi-model repository (cores / sessions)
    session = ort.InferenceSession(arguments.model, options, providers=["CPUExecutionProvider"])
    uvicorn.run(build_app(session, arguments.name), host="127.0.0.1", port=arguments.port, log_level="warning")


if __name__ == "__main__":
    main()
