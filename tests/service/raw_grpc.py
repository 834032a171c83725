"""A bare gRPC-over-HTTP/2 client (zttp's client role on a socket), for what grpc's own clients never send:
unknown encodings, truncated bodies, two messages on a unary call, a malformed deadline."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

import zttp


@dataclass
class RawAnswer:
    """Everything the server sent on the stream."""

    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    goaway: tuple[int, int] | None = None  # (error code, last stream id) of the server's GOAWAY, if it sent one
    goaway_at: float = 0.0  # time.monotonic() when that GOAWAY arrived
    ended_at: float = 0.0  # time.monotonic() when the stream's trailers arrived

    @property
    def grpc_status(self) -> int:
        return int((self.trailers or self.headers)[b"grpc-status"])

    @property
    def grpc_message(self) -> str:
        return unquote((self.trailers or self.headers).get(b"grpc-message", b"").decode("ascii"))

    def messages(self) -> list[bytes]:
        """The length-prefixed messages of the body (uncompressed)."""
        found, rest = [], self.body
        while rest:
            length = int.from_bytes(rest[1:5], "big")
            found.append(rest[5 : 5 + length])
            rest = rest[5 + length :]
        return found


def framed(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([int(compressed)]) + len(payload).to_bytes(4, "big") + payload


def raw_call(
    address: str,
    method: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    close_request: bool = True,
    content_type: bytes = b"application/grpc",
    timeout: float = 10,
    first_data: threading.Event | None = None,
) -> RawAnswer:
    """POST `body` (already framed) to /inference.GRPCInferenceService/<method>; the whole answer.
    `close_request` False leaves the request side open (a stream that goes quiet); `first_data` is set once
    the answer's first DATA frame arrives."""
    host, port = address.rsplit(":", 1)
    connection = zttp.Connection(zttp.CLIENT, protocol=zttp.HTTP2)
    connection.initiate_connection()
    answer = RawAnswer()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        request_headers = [
            (b"host", address.encode()),
            (b"content-type", content_type),
            (b"te", b"trailers"),
            *(headers or []),
        ]
        stream = connection.send_request(
            b"POST", f"/inference.GRPCInferenceService/{method}".encode(), b"HTTP/2", request_headers
        )
        if body:
            stream.send_data(body)
        if close_request:
            stream.end_message()
        sock.sendall(connection.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection before the answer ended")
            connection.receive_data(data)
            while (event := connection.next_event()) is not zttp.NEED_DATA:
                if isinstance(event, zttp.Response) and event.stream_id == stream.stream_id:
                    answer.status = event.status_code
                    answer.headers = dict(_pairs(event.headers))
                elif isinstance(event, zttp.Data) and event.stream_id == stream.stream_id:
                    answer.body += event.data
                    if first_data is not None:
                        first_data.set()
                elif isinstance(event, zttp.GoAway):
                    answer.goaway, answer.goaway_at = (event.error_code, event.last_stream_id), time.monotonic()
                elif isinstance(event, zttp.EndOfMessage) and event.stream_id == stream.stream_id:
                    answer.trailers, answer.ended_at = dict(_pairs(event.trailers)), time.monotonic()
                    return answer
            pending = connection.data_to_send()
            if pending:
                sock.sendall(pending)


def _pairs(headers: object) -> list[tuple[bytes, bytes]]:
    if isinstance(headers, zttp.HeaderBlock):
        return headers.to_list(lowercase_names=True)
    return [(bytes(name).lower(), bytes(value)) for name, value in headers]  # type: ignore[attr-defined]
