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
