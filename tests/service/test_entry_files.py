"""An entry may only use regular files inside its own directory, and no entry can keep the others from loading:
files named by absolute path or '../', symbolic links, and FIFOs are refused with a reason, on a real server."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from bnfold.service.settings import Settings
from tests.service.builders import write_entry
from tests.service.server import running_server

INSIDE = "an entry may only use regular files inside its own directory"


def _name_file(entry: Path, variant: str, file: str) -> None:
    manifest = json.loads((entry / "model.json").read_text())
    manifest["variants"][variant]["file"] = file
    (entry / "model.json").write_text(json.dumps(manifest))


def _reasons(client: object, timeout: float = 20.0) -> dict[str, tuple[str, str | None]]:
    """Model states and reasons once the server is ready, which must happen within `timeout` seconds."""
    import httpx

    assert isinstance(client, httpx.Client)
    deadline = time.monotonic() + timeout
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, f"server not ready within {timeout} s"
        time.sleep(0.05)
    return {m["name"]: (m["state"], m["reason"]) for m in client.get("/v2/models").json()["models"]}


def test_files_outside_the_entry_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    """Each foreign file is a copy of the entry's own (so it would pass the digest and the calibration gate)."""
    repository, outside = tmp_path / "repository", tmp_path / "outside"
    write_entry(repository, "good", rng)
    outside.mkdir()
    for name in ("absolute", "dotdot", "linked", "linked_calibration"):
        write_entry(repository, name, rng)
    (repository / "absolute" / "folded.onnx").rename(outside / "absolute.onnx")
    foreign = outside / "absolute.onnx"
    _name_file(repository / "absolute", "folded", str(foreign))
    (repository / "dotdot" / "folded.onnx").rename(outside / "dotdot.onnx")
    _name_file(repository / "dotdot", "folded", "../../outside/dotdot.onnx")
    (repository / "linked" / "folded.onnx").rename(outside / "linked.onnx")
    (repository / "linked" / "folded.onnx").symlink_to(outside / "linked.onnx")
    (repository / "linked_calibration" / "calibration.npz").rename(outside / "calibration.npz")
    (repository / "linked_calibration" / "calibration.npz").symlink_to(outside / "calibration.npz")

    with running_server(Settings(repository=repository), wait_ready=False) as server:
        reasons = _reasons(server.client)
    assert reasons["good"] == ("ready", None)
    assert reasons["absolute"] == (
        "unavailable",
        f"model.json names folded variant file {str(foreign)!r}: {INSIDE}, named without a path; rebuild the entry",
    )
    assert reasons["dotdot"] == (
        "unavailable",
        f"model.json names folded variant file '../../outside/dotdot.onnx': {INSIDE}, named without a path; "
        "rebuild the entry",
    )
    assert reasons["linked"] == (
        "unavailable",
        f"folded variant file folded.onnx is a symbolic link: {INSIDE}; replace it with the file itself",
    )
    assert reasons["linked_calibration"] == (
        "unavailable",
        f"calibration file calibration.npz is a symbolic link: {INSIDE}; replace it with the file itself",
    )


def test_a_fifo_never_blocks_the_other_models(tmp_path: Path, rng: np.random.Generator) -> None:
    repository = tmp_path / "repository"
    write_entry(repository, "good", rng)
    write_entry(repository, "fifo_calibration", rng)
    (repository / "fifo_calibration" / "calibration.npz").unlink()
    os.mkfifo(repository / "fifo_calibration" / "calibration.npz")
    write_entry(repository, "fifo_manifest", rng)
    (repository / "fifo_manifest" / "model.json").unlink()
    os.mkfifo(repository / "fifo_manifest" / "model.json")
    write_entry(repository, "later_good", rng)  # sorted after both FIFO entries

    with running_server(Settings(repository=repository), wait_ready=False) as server:
        started = time.monotonic()
        reasons = _reasons(server.client, timeout=20.0)
        assert time.monotonic() - started < 20.0
        assert server.client.post("/v2/models/later_good/infer", json=_request(rng)).status_code == 200
    assert reasons["good"] == reasons["later_good"] == ("ready", None)
    assert reasons["fifo_calibration"] == (
        "unavailable",
        f"calibration file calibration.npz is a FIFO (named pipe): {INSIDE}; replace it with the file itself",
    )
    manifest = repository / "fifo_manifest" / "model.json"
    assert reasons["fifo_manifest"] == (
        "unavailable",
        f"{manifest}: manifest file model.json is a FIFO (named pipe): {INSIDE}; replace it with the file itself",
    )


def _request(rng: np.random.Generator) -> dict[str, object]:
    x = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
