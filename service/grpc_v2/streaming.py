"""ModelStreamInfer: V2 inference requests and their answers on one bidirectional gRPC stream (Triton's RPC).

Each request read from the stream is answered on it by one `ModelStreamInferResponse`, in the order the
requests came (as Triton answers a stream to a model that is not decoupled, so a client may match answers by
position): `infer_response` as ModelInfer would answer it, or, when that request fails, `error_message` (the
message ModelInfer's status would carry) with `infer_response` holding only the request's `id`, `model_name`
and `model_version`. A failed request does not end the stream. Every answer carries the parameter
`triton_final_response` = true (each request has exactly one answer), as Triton marks its streamed answers.

Up to `in_flight` requests of one stream are in progress at once (read and not yet answered): they run
concurrently, so a model that runs off the event loop gets them batched; while that many are unanswered the
stream's next request is not read and the client is held back (see http2.py). The stream ends once the
client has closed its side and every request read has been answered; a client that cancels or goes away
cancels the runs still waiting. A message that is not a ModelInferRequest ends the stream with
INVALID_ARGUMENT once the requests before it are answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from google.protobuf.message import DecodeError

from bnfold.service.errors import BadRequestError, ServiceError
from bnfold.service.grpc_v2 import inference_pb2 as pb

log = logging.getLogger("bnfold.service")
Infer = Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]]
Write = Callable[[pb.ModelStreamInferResponse], Awaitable[None]]
Fail = Callable[[pb.ModelInferRequest, Exception], str]
FINAL = "triton_final_response"
CANCELLED = "the request was cancelled before it ran (the server is stopping); send it again"


class StreamGone(Exception):
    """The client has gone (cancelled the stream or disconnected): answers can no longer be written."""


async def answer_stream(
    requests: AsyncIterator[pb.ModelInferRequest], infer: Infer, write: Write, fail: Fail, in_flight: int
) -> None:
    """Answer every request of `requests` with `write`, in request order, at most `in_flight` in progress.

    `infer` answers one request (raising ServiceError for a request error); `fail(request, error)` gives the
    error message of any other exception (and logs it). A failed `write` ends the stream quietly, cancelling
    the runs still going: with one write at a time, writing fails only once the call is over (the client
    cancelled or went away), which grpc may report to the handler later than the write fails."""
    slots = asyncio.Semaphore(in_flight)
    answers: asyncio.Queue[asyncio.Task[pb.ModelStreamInferResponse] | None] = asyncio.Queue()

    async def answer(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        try:
            response = pb.ModelStreamInferResponse(infer_response=await infer(request))
        except ServiceError as error:
            response = failure(request, error.message)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the stream itself is being cancelled
            response = failure(request, CANCELLED)  # the batcher was stopped under this request
        except Exception as error:
            response = failure(request, fail(request, error))
        response.infer_response.parameters[FINAL].bool_param = True
        return response

    async def write_in_order() -> None:
        while (task := await answers.get()) is not None:
            response = await task
            try:
                await write(response)
            except Exception as error:
                log.debug("ModelStreamInfer: an answer could not be written (%r); the stream is over", error)
                raise StreamGone from error
            slots.release()

    unreadable: DecodeError | None = None
    gone = False
    try:
        async with asyncio.TaskGroup() as running:  # a failing task cancels the others
            running.create_task(write_in_order())
            while True:
                await slots.acquire()
                try:
                    request = await anext(requests, None)
                except DecodeError as error:
                    unreadable, request = error, None
                if request is None:
                    break
                answers.put_nowait(running.create_task(answer(request)))
            answers.put_nowait(None)
    except* StreamGone:
        gone = True  # nobody is left to answer; the other runs were cancelled
    except* Exception as group:
        raise group.exceptions[0] from None  # as a ModelInfer call would raise it
    if unreadable is not None and not gone:
        message = f"a message of the stream is not a ModelInferRequest ({unreadable}); send one per message"
        raise BadRequestError(message)


def failure(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """The answer to a failed request: its error message, and the fields that identify the request."""
    identity = pb.ModelInferResponse(id=request.id, model_name=request.model_name, model_version=request.model_version)
    return pb.ModelStreamInferResponse(error_message=message, infer_response=identity)
