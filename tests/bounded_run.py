"""Run a command as a subprocess under a wall-clock deadline, sampling its resident memory (VmRSS)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BoundedRun:
    finished: bool  # False: still running at the deadline (then killed)
    code: int | None
    out: str
    err: str
    seconds: float
    peak_rss_bytes: int


def rss_bytes(pid: int) -> int:
    """VmRSS of /proc/<pid>/status in bytes; 0 once the process has gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")), 0)


def run_bounded(command: list[str], deadline_seconds: float, cwd: Path | None = None) -> BoundedRun:
    """Run `command`; kill it if it has not exited `deadline_seconds` after the start."""
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None and time.monotonic() - start < deadline_seconds:
        peak = max(peak, rss_bytes(process.pid))
        time.sleep(0.05)
    finished = process.poll() is not None
    if not finished:
        process.kill()
    out, err = process.communicate(timeout=30)
    return BoundedRun(finished, process.returncode if finished else None, out, err, time.monotonic() - start, peak)
