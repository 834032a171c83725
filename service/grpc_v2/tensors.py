"""Translate gRPC infer messages to and from what the HTTP path uses, so both share every check and encoding.

Request: each input becomes a V2 JSON-style item. Typed `contents` (the repeated field of the datatype's family,
e.g. `fp32_contents` for FP32) become its `data`; `raw_input_contents` (little-endian row-major bytes, one
entry per input in input order — what tritonclient sends) become the binary tail, each input declaring its
`binary_data_size`, exactly like the HTTP binary extension. `bnfold.service.v2_request.decode_inputs` then
checks names, datatypes, shapes, sizes, batch and NaN with the HTTP messages.

Response: outputs go as `raw_output_contents` when the request sent raw inputs, or asked for binary outputs
(request parameter `binary_data_output`, output parameter `binary_data`), or an output's datatype has no typed
field (FP16); otherwise as typed `contents`. The protocol uses raw contents for all outputs or none.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.message import Message

from bnfold.service.datatypes import v2_name
from bnfold.service.errors import BadRequestError
from bnfold.service.grpc_v2 import inference_pb2 as pb
from bnfold.service.v2_response import OutputRequest

# The typed-contents field of each datatype (FP16 has none in the protocol: raw contents only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def request_document(request: pb.ModelInferRequest) -> tuple[dict[str, Any], memoryview]:
    """The V2 document (id, parameters, inputs, outputs) and binary tail of a ModelInferRequest."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequestError(
            f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents; send one "
            "raw_input_contents entry per input, in the order of inputs"
        )
    if raw:
        items = [_raw_item(tensor, contents) for tensor, contents in zip(request.inputs, raw, strict=True)]
    else:
        items = [_input_item(tensor) for tensor in request.inputs]
    document: dict[str, Any] = {"inputs": items, "parameters": parameter_values(request.parameters)}
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [
            {"name": output.name, "parameters": parameter_values(output.parameters)} for output in request.outputs
        ]
    return document, memoryview(raw[0] if len(raw) == 1 else b"".join(raw))


def _raw_item(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes) -> dict[str, Any]:
    if tensor.HasField("contents") and (given := tensor.contents.ListFields()):
        raise BadRequestError(
            f"input {tensor.name!r} has both contents.{given[0][0].name} and raw_input_contents; send one of them"
        )
    parameters = {"binary_data_size": len(raw)}
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "parameters": parameters}


def _input_item(tensor: pb.ModelInferRequest.InferInputTensor) -> dict[str, Any]:
    item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    given = [field.name for field, _ in tensor.contents.ListFields()] if tensor.HasField("contents") else []
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None and tensor.datatype == "FP16":
        raise BadRequestError(f"input {tensor.name!r} is FP16, which has no typed contents; send raw_input_contents")
    wrong = [name for name in given if name != field]
    if field is not None and wrong:
        raise BadRequestError(
            f"input {tensor.name!r} has datatype {tensor.datatype}, whose typed contents go in contents.{field}, "
            f"not contents.{wrong[0]}"
        )
    item["data"] = list(getattr(tensor.contents, field)) if field is not None else []
    return item


def parameter_values(parameters: Any) -> dict[str, Any]:
    """A protobuf map of InferParameter as plain values ({"binary_data_output": True, ...})."""
    if not parameters:
        return {}
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    """Store a bool, int, float or str in the InferParameter field of its type."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def infer_response(
    header: dict[str, Any], outputs: dict[str, np.ndarray], wanted: OutputRequest, raw_request: bool
) -> pb.ModelInferResponse:
    """The ModelInferResponse of the HTTP path's header and outputs (raw or typed contents, see the module)."""
    response = pb.ModelInferResponse(
        model_name=header["model_name"], model_version=header["model_version"], id=header.get("id", "")
    )
    for key, value in header["parameters"].items():
        set_parameter(response.parameters[key], value)
    datatypes = {name: v2_name(outputs[name].dtype) for name in wanted.names}
    raw = raw_request or any(wanted.binary.values()) or any(d not in CONTENTS_FIELD for d in datatypes.values())
    for name in wanted.names:
        array = outputs[name]
        tensor = response.outputs.add(name=name, datatype=datatypes[name], shape=array.shape)
        if raw:
            response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
        else:
            contents: Message = tensor.contents
            getattr(contents, CONTENTS_FIELD[datatypes[name]]).extend(array.reshape(-1).tolist())
    return response
