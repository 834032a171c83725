"""The gRPC floor of an ASGI server: the cheapest possible ModelInfer as an ASGI app on uvicorn's own HTTP/2
protocol (on zttp, as uvicorn ships it), on uvloop — what a gRPC port on an ASGI server costs before any work
(bnfold's gRPC port ran on it before it had an HTTP/2 server of its own, bench.http2_grpc_floor).

    python -m bench.asgi_grpc_floor --port 8001 --response FILE

The app reads each call's body and answers the bytes of FILE (a serialised ModelInferResponse of the benchmarked
model, so the answer is as long as bnfold's) as one gRPC message with grpc-status 0; ModelStreamInfer answers
each whole message of the stream, as it arrives, with the ModelStreamInferResponse wrapping those bytes.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol

from bench.http2_grpc_floor import framed_answers
from bench.peer_servers.floor_cli import floor_arguments

START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/grpc")],
    "trailers": True,
}
OK = {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]}


def floor_app(answer: bytes) -> Any:
    unary, streamed = framed_answers(answer)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"].endswith("/ModelStreamInfer"):
            await send(START)
            pending, more = b"", True
            while more:
                message = await receive()
                pending += message.get("body", b"")
                more = message.get("more_body", False)
                while len(pending) >= 5 and len(pending) >= 5 + (end := int.from_bytes(pending[1:5], "big")):
                    pending = pending[5 + end :]
                    await send({"type": "http.response.body", "body": streamed, "more_body": True})
        else:
            more = True
            while more:
                more = (await receive()).get("more_body", False)
            await send(START)
            await send({"type": "http.response.body", "body": unary, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        await send(OK)

    return app


def main() -> None:
    port, answer = floor_arguments(__doc__)
    uvicorn.run(
        floor_app(answer),
        host="127.0.0.1",
        port=port,
        http=ZttpH2Protocol,  # uvicorn's HTTP/2, prior knowledge (what gRPC clients speak)
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
