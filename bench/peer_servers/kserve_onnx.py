"""KServe's Python model server with a minimal onnxruntime model (run in KServe's own virtualenv).

    <kserve-venv>/bin/python bench/peer_servers/kserve_onnx.py --model_name digits_resnet \
        --model_path folded.onnx --http_port 8001 --grpc_port 8002

Everything else is KServe's default (one uvicorn worker, its access and latency logging, gRPC server on).
"""

from __future__ import annotations

import argparse

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.utils.utils import generate_uuid


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # as bnfold serve on a multi-model repository
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feeds = {item.name: item.as_numpy() for item in payload.inputs}
        outputs = []
        for meta, value in zip(self.session.get_outputs(), self.session.run(None, feeds), strict=True):
            output = InferOutput(name=meta.name, shape=list(value.shape), datatype="FP32")
            output.set_data_from_numpy(value, binary_data=False)
            outputs.append(output)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or generate_uuid())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True)
    arguments, _ = parser.parse_known_args()
    ModelServer().start([OnnxModel(arguments.model_name, arguments.model_path)])
