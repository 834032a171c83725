"""ModelStreamInfer: V2 inference requests and their answers on one bidirectional gRPC stream (Triton's RPC).

Each request read from the stream is answered on it by one `ModelStreamInferResponse`: `infer_response` as
ModelInfer would answer it, or, when that request fails, `error_message` (the message ModelInfer's status would
carry) with `infer_response` holding only the request's `id`, `model_name` and `model_version`, so a client can
tell which request failed. A failed request does not end the stream.

Up to `in_flight` requests of one stream run at once, so a client that sends many without waiting has them
batched like concurrent calls; while that many are unanswered the stream's next request is not read, and
HTTP/2 flow control holds the client back (a stream cannot take more memory or runs than that). Answers go
out as requests finish, not in request order (match them by `id`). The stream ends once the client has
closed its side and every request read has been answered; a client that cancels cancels its runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from bnfold.service.errors import ServiceError
from bnfold.service.grpc_v2 import inference_pb2 as pb

Infer = Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]]
Write = Callable[[pb.ModelStreamInferResponse], Awaitable[None]]
log = logging.getLogger("bnfold.service")
Fail = Callable[[pb.ModelInferRequest, Exception], str]


class StreamGone(Exception):
    """The client has gone (cancelled the stream or disconnected): answers can no longer be written."""


async def answer_stream(
    requests: AsyncIterator[pb.ModelInferRequest],
    infer: Infer,
    write: Write,
    fail: Fail,
    in_flight: int,
) -> None:
    """Answer every request of `requests` with `write`, at most `in_flight` running at once.

    `infer` answers one request (raising ServiceError for a request error); `fail(request, error)` gives the
    error message of any other exception (and logs it). A failed `write` ends the stream quietly, cancelling
    the runs still going: with one write at a time, writing fails only once the call is over (the client
    cancelled or went away), which grpc may report to the handler later than the write fails."""
    slots = asyncio.Semaphore(in_flight)
    writing = asyncio.Lock()  # one message at a time on the stream

    async def answer(request: pb.ModelInferRequest) -> None:
        try:
            try:
                response = pb.ModelStreamInferResponse(infer_response=await infer(request))
            except ServiceError as error:
                response = failure(request, error.message)
            except Exception as error:
                response = failure(request, fail(request, error))
            async with writing:
                try:
                    await write(response)
                except Exception as error:
                    log.debug("ModelStreamInfer: an answer could not be written (%r); the stream is over", error)
                    raise StreamGone from error
        finally:
            slots.release()

    try:
        async with asyncio.TaskGroup() as running:  # a failing task cancels the others
            while True:
                await slots.acquire()
                request = await anext(requests, None)
                if request is None:
                    break
                running.create_task(answer(request))
    except* StreamGone:
        pass  # nobody is left to answer; the other runs were cancelled


def failure(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """The answer to a failed request: its error message, and the fields that identify the request."""
    identity = pb.ModelInferResponse(id=request.id, model_name=request.model_name, model_version=request.model_version)
    return pb.ModelStreamInferResponse(error_message=message, infer_response=identity)
