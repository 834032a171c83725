"""The command line every bare gRPC floor takes: `--port P --response FILE` (standard library only, so that a
floor running in a virtualenv of its own imports it too, from this folder)."""

from __future__ import annotations

import argparse
from pathlib import Path


def floor_arguments(description: str | None) -> tuple[int, bytes]:
    """The port to listen on (127.0.0.1) and the bytes of FILE, the serialised ModelInferResponse to answer."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response", type=Path, required=True, help="serialised ModelInferResponse to answer")
    arguments = parser.parse_args()
    return arguments.port, arguments.response.read_bytes()


def stream_answer(answer: bytes) -> bytes:
    """The ModelStreamInferResponse carrying `answer` (a serialised ModelInferResponse) as its infer_response:
    field 2, length-delimited (tag byte 0x12, the length as a varint, the bytes)."""
    length, varint = len(answer), bytearray()
    while length > 0x7F:
        varint.append(length & 0x7F | 0x80)
        length >>= 7
    varint.append(length)
    return b"\x12" + bytes(varint) + answer
