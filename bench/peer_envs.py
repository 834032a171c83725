"""Virtualenvs of the peer servers (KServe, MLServer, grpclib), created on first use under a cache directory.

Their pins conflict with bnfold's (and with each other's), so each gets its own environment:

    <cache>/kserve/     pip install kserve==KSERVE onnxruntime
    <cache>/mlserver/   pip install mlserver==MLSERVER onnxruntime
    <cache>/grpclib/    pip install grpclib==GRPCLIB uvloop   (the other Python gRPC server, for its floor)

<cache> is $BNFOLD_PEERS_CACHE, else ~/.cache/bnfold/peers. An environment is reused while its marker file
(the exact requirement list it was built from) matches; otherwise it is rebuilt.

    python -m bench.peer_envs            build them all now (what bench.peers does first)
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.virtualenvs import cached_virtualenv

KSERVE = "0.21.0"
MLSERVER = "1.7.1"
GRPCLIB = "0.4.9"
REQUIREMENTS = {
    "kserve": [f"kserve=={KSERVE}", "onnxruntime", "numpy"],
    # uvloop 0.22 made asyncio.get_event_loop() raise outside a running loop, which MLServer 1.7.1's parallel
    # inference workers call at start-up: they die at once on a newer uvloop.
    "mlserver": [f"mlserver=={MLSERVER}", "uvloop==0.21.0", "onnxruntime", "numpy"],
    "grpclib": [f"grpclib=={GRPCLIB}", "uvloop"],
}


def cache_dir() -> Path:
    return Path(os.environ.get("BNFOLD_PEERS_CACHE") or Path.home() / ".cache" / "bnfold" / "peers")


def python_of(name: str) -> Path:
    """The interpreter of peer `name`'s environment, building the environment when missing or stale."""
    return cached_virtualenv(cache_dir() / name, REQUIREMENTS[name])


def main() -> None:
    for name in REQUIREMENTS:
        print(name, python_of(name))


if __name__ == "__main__":
    main()
