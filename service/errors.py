"""Domain errors of the inference service; each carries the HTTP status it maps to.

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
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; `status` is the HTTP status the error maps to."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(ServiceError):
    """The request is malformed or does not match the model's inputs."""

    status = 400


class UnauthorizedError(ServiceError):
    """The bearer token is missing or wrong."""

    status = 401


class NotFoundError(ServiceError):
    """Unknown model, version or route."""

    status = 404


class MethodNotAllowedError(ServiceError):
    """The path exists but not with this method."""

    status = 405


class PayloadTooLargeError(ServiceError):
    """The body or the batch is over its configured limit."""

    status = 413


class UnrepresentableOutputError(ServiceError):
    """An output asked for as JSON holds NaN or Inf, which JSON cannot carry; binary tensor data can."""

    status = 422


class NotReadyError(ServiceError):
    """The model (or the server) is not ready to serve."""

    status = 503


class InferenceError(ServiceError):
    """onnxruntime failed on an input that passed validation: a server-side problem, logged."""

    status = 500
