"""`bnfold serve` runs on uvloop + httptools (uvicorn[standard]), says so at start-up, and falls back to asyncio +
h11 with a warning naming the missing package."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bnfold.service.server_stack import ServerStack, fast_stack
from tests.load.serve_process import free_port
from tests.service.builders import write_entry

ROOT = Path(__file__).resolve().parents[2]
BNFOLD = Path(sys.executable).parent / "bnfold"


def _mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_serve_runs_on_uvloop_and_httptools_and_says_so(tmp_path: Path, rng: np.random.Generator) -> None:
    write_entry(tmp_path, "digits", rng)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNFOLD_")} | {"BNFOLD_REPOSITORY": str(tmp_path)}
    command = [str(BNFOLD), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
        maps = _mapped_libraries(process.pid)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    # What runs, not only what was asked for: both C extensions are mapped into the server process.
    assert "/uvloop/loop." in maps and "/httptools/parser/parser." in maps
    start_lines = [line for line in stderr.splitlines() if "bnfold serve on http://" in line]
    assert len(start_lines) == 1, stderr
    assert start_lines[0].endswith(
        f"bnfold serve on http://127.0.0.1:{port} (event loop uvloop, HTTP parser httptools)"
    )


@pytest.mark.parametrize(
    ("missing", "expected"),
    [("uvloop", ServerStack("asyncio", "httptools")), ("httptools", ServerStack("uvloop", "h11"))],
)
def test_a_missing_fast_package_falls_back_with_a_warning(
    missing: str, expected: ServerStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # import machinery: a None entry means "cannot be imported"
    with caplog.at_level(logging.WARNING, logger="bnfold.service"):
        assert fast_stack() == expected
    fallback = "asyncio" if missing == "uvloop" else "h11"
    assert [record.getMessage() for record in caplog.records] == [
        f"{missing} is not installed: serving on {fallback}, which costs more CPU per request; "
        "install uvicorn[standard]"
    ]


def test_both_fast_packages_are_installed_with_the_serving_dependencies() -> None:
    assert fast_stack() == ServerStack("uvloop", "httptools")
