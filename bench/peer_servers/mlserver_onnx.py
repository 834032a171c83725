"""MLServer's custom runtime for one ONNX model (run in MLServer's own virtualenv): `implementation` of the
model-settings.json that bench.peers writes, with `parameters.uri` the path of the .onnx file.

MLServer's other settings stay at their defaults except the ports, and `parallel_workers` (the comparison
runs it with MLServer's default and with 0, inference in the main process).
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # as bnfold serve on a multi-model repository
        path = self.settings.parameters.uri
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results = self.session.run(None, feeds)
        outputs = [
            NumpyCodec.encode_output(meta.name, value)
            for meta, value in zip(self.session.get_outputs(), results, strict=True)
        ]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)
