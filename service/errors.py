"""Domain errors of the inference service; each carries the HTTP status and the gRPC status code it maps to.

Exception hierarchy::

    ServiceError (500)             base; one handler in service/app.py turns any of them into {"error": message}
    ├── BadRequestError (400)      malformed body, missing/extra inputs, wrong datatype/shape, NaN/Inf, ...
    ├── UnauthorizedError (401)    missing or wrong bearer token
    ├── NotFoundError (404)        unknown model, version or route
    ├── MethodNotAllowedError (405) a V2 infer path asked with another method than POST
    ├── PayloadTooLargeError (413) body over BNFOLD_MAX_BODY_BYTES or batch over BNFOLD_MAX_BATCH_SIZE
    ├── UnrepresentableOutputError (422)  an output asked for as JSON holds NaN/Inf (JSON cannot carry them)
    ├── NotReadyError (503)        model still loading, or refused at load (reason in its metadata)
    └── InferenceError (500)       onnxruntime failed on input that passed every check (logged)

The data plane raises them without knowing about HTTP; messages name the problem and the fix in one line.
gRPC (service/grpc_v2) answers the same messages with `grpc_code`: INVALID_ARGUMENT (400, 422), UNAUTHENTICATED
(401), NOT_FOUND (404), RESOURCE_EXHAUSTED (413), UNAVAILABLE (503), INTERNAL (500).
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; `status` is the HTTP status the error maps to."""

    status: int = 500
    grpc_code: str = "INTERNAL"  # a grpc.StatusCode name (kept a string: this module imports no transport)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(ServiceError):
    """The request is malformed or does not match the model's inputs."""

    status = 400
    grpc_code = "INVALID_ARGUMENT"


class UnauthorizedError(ServiceError):
    """The bearer token is missing or wrong."""

    status = 401
    grpc_code = "UNAUTHENTICATED"


class NotFoundError(ServiceError):
    """Unknown model, version or route."""

    status = 404
    grpc_code = "NOT_FOUND"


class MethodNotAllowedError(ServiceError):
    """The path exists but not with this method."""

    status = 405


class PayloadTooLargeError(ServiceError):
    """The body or the batch is over its configured limit."""

    status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnrepresentableOutputError(ServiceError):
    """An output asked for as JSON holds NaN or Inf, which JSON cannot carry; binary tensor data can."""

    status = 422
    grpc_code = "INVALID_ARGUMENT"


class NotReadyError(ServiceError):
    """The model (or the server) is not ready to serve."""

    status = 503
    grpc_code = "UNAVAILABLE"


class InferenceError(ServiceError):
    """onnxruntime failed on an input that passed validation: a server-side problem, logged."""

    status = 500
