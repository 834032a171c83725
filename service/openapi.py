"""OpenAPI descriptions of the inference routes, whose handlers read raw bodies (no pydantic models).

FastAPI cannot infer a request body from `Request`, so the V2 inference request (and `/predict`) is described
here, for clients, for `/openapi.json` and for the schemathesis fuzzing in tests/load. The binary tensor data
extension (`Inference-Header-Content-Length`) is described in words: its body is JSON followed by raw bytes.
"""

from __future__ import annotations

from typing import Any

from bnfold.service.datatypes import V2_TO_NUMPY
from bnfold.service.v2_request import BINARY_HEADER

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "One line naming the problem and the fix."}},
}
_PARAMETERS = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
_TENSOR_INPUT = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": sorted(V2_TO_NUMPY)},
        "parameters": _PARAMETERS,
        "data": {"type": "array", "description": "Flat or nested row-major values (bool, integer or number)."},
    },
}
_TENSOR_OUTPUT = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"},
        "parameters": _PARAMETERS,
        "data": {"type": "array"},
    },
}
INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "inputs": {"type": "array", "items": _TENSOR_INPUT},
        "outputs": {
            "type": "array",
            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        },
    },
}
INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "outputs": {"type": "array", "items": _TENSOR_OUTPUT},
    },
}
PREDICT_REQUEST = {
    "type": "object",
    "required": ["model", "inputs"],
    "properties": {
        "model": {"type": "string"},
        "inputs": {"description": "A nested list (single-input models) or {input name: nested list}."},
        "variant": {"type": "string", "enum": ["folded", "unfolded", "both"]},
        "id": {"type": "string"},
    },
}
_ERRORS = {
    "400": "Bad request (the message names the input and what was expected)",
    "401": "Missing or wrong bearer token",
    "404": "Unknown model or version",
    "413": "Body or batch over the limit",
    "422": "An output asked for as JSON holds NaN or Infinity (JSON cannot carry them); ask for binary data",
    "500": "onnxruntime failed on a valid-looking input",
    "503": "Model loading or refused at load",
}


def _errors(codes: tuple[str, ...]) -> dict[int | str, dict[str, Any]]:
    return {code: {"description": _ERRORS[code], "content": {"application/json": {"schema": ERROR}}} for code in codes}


def body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """`openapi_extra` of a route whose handler reads the raw body."""
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


INFER_BODY = body(
    INFER_REQUEST,
    "V2 inference request. Binary tensor data extension: send the JSON, then each binary input's bytes, with the "
    f"header {BINARY_HEADER} giving the JSON length and parameters.binary_data_size per input.",
)
PREDICT_BODY = body(PREDICT_REQUEST, "Simple prediction request.")
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "V2 inference response", "content": {"application/json": {"schema": INFER_RESPONSE}}},
    **_errors(("400", "401", "404", "413", "422", "500", "503")),
}
PREDICT_RESPONSES = _errors(("400", "401", "404", "413", "422", "500", "503"))

# The V2 infer routes are answered before FastAPI's router (service.fast_infer), so no FastAPI route declares
# them: they are added to the generated document here, in the form FastAPI itself would give them.
INFER_PATHS = {
    "/v2/models/{model}/versions/{version}/infer": (
        "Infer Version",
        "infer_version_v2_models__model__versions__version__infer_post",
        ("model", "version"),
    ),
    "/v2/models/{model}/infer": ("Infer", "infer_v2_models__model__infer_post", ("model",)),
}


def add_infer_paths(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (an OpenAPI document of the app) with the V2 infer routes described."""
    responses = {str(status): response for status, response in INFER_RESPONSES.items()}
    for path, (summary, operation_id, names) in INFER_PATHS.items():
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "title": name.title()}}
            for name in names
        ]
        operation = {"summary": summary, "operationId": operation_id, "parameters": parameters}
        document.setdefault("paths", {})[path] = {"post": {**operation, "responses": responses, **INFER_BODY}}
    return document
