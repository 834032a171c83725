"""The HTTP floor: the cheapest possible POST handler on the same ASGI server `bnfold serve` uses.

    python -m bench.bare_server --port 8001

uvicorn on the same stack as `bnfold serve` (bnfold.service.server_stack: uvloop + httptools), log level warning; the
handler reads the whole body and answers a fixed small JSON with its Content-Length (as a Starlette Response
of the service does).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import uvicorn

from bnfold.service.server_stack import fast_stack

ANSWER = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def bare_post_handler(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Read the whole body, answer a fixed JSON: the least an ASGI application can do for a POST."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    stack = fast_stack()
    uvicorn.run(
        bare_post_handler,
        host=arguments.host,
        port=arguments.port,
        log_level="warning",
        loop=stack.loop,
        http=stack.http,
    )


if __name__ == "__main__":
    main()
