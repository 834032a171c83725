"""Shared helpers of the benchmarks: interleaved timing, robust summaries, markdown tables, JSON results.

Timing rule: every variant of a comparison is warmed up, then each repetition runs every variant once,
round-robin, starting at a different variant each time (rotation), so a slow phase of a shared machine
(another process, frequency change, a cache flush) lands on all variants alike instead of on whichever ran
last. The statistic reported is the median, with the 10th and 90th percentiles for spread.

This module imports neither torch nor onnxruntime, so the serving benchmarks can use it too.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Summary:
    """Robust summary of repeated timings, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repetitions: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        """Median and 10th/90th percentiles (inclusive method; a single sample gives all three equal)."""
        if not seconds:
            raise ValueError("no timings to summarise; run at least one repetition")
        ms = sorted(1000.0 * s for s in seconds)
        if len(ms) == 1:
            return cls(ms[0], ms[0], ms[0], 1)
        deciles = statistics.quantiles(ms, n=10, method="inclusive")
        return cls(statistics.median(ms), deciles[0], deciles[-1], len(ms))

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def interleaved_timings(
    runners: Mapping[str, Callable[[], object]], *, repetitions: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall-clock seconds of each runner: `warmup` untimed calls each, then `repetitions` rotated rounds.

    Round r runs the variants in the order v_r, v_{r+1}, …, v_{r−1} (indices mod the number of variants),
    and times each call separately with time.perf_counter.
    """
    if repetitions < 1 or warmup < 0:
        raise ValueError(f"need repetitions ≥ 1 and warmup ≥ 0, got {repetitions} and {warmup}")
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repetitions):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers are expected to be formatted by the caller."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells, the header has {len(header)}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_flags() -> list[str]:
    """The SIMD extensions of SIMD_FLAGS the CPU reports (they decide conv kernel speed)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in SIMD_FLAGS if flag in present]
    except OSError:
        pass
    return []


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_description(**settings: Any) -> dict[str, Any]:
    """CPU, cores, OS, Python and library versions, plus the caller's settings (threads, …)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cpu_simd": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in ("torch", "onnxruntime", "onnx", "numpy")},
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **settings,
    }


def save_results(name: str, payload: Mapping[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write `payload` as indented JSON to directory/name.json via a temporary file and a rename."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.json"
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    temporary.replace(target)
    return target
