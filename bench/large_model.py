"""A model over protobuf's 2 GiB limit end to end: fold-and-export, verify and serve, each a real process.

    .venv/bin/python -m bench.large_model [--hidden 33600] [--work DIR] [--keep]

1. `bench.large_model_graph` writes SRC/m.onnx + SRC/m.onnx.data (Conv-BN ×2, a Gemm-BN whose weight alone is
   2.2 GB, a small head; random BatchNorm statistics), streaming the weights to disk: no protobuf holds them.
2. `bnfold fold-and-export --model ../src/m.onnx --out ../repo --json` runs in another directory (the source's
   external data is resolved relative to the model file, not the working directory).
3. `bnfold verify ../repo/m` runs in a third directory.
4. `bnfold serve` loads the repository (both variants, the calibration gate) and answers one V2 infer request
   per variant over 127.0.0.1, then is stopped; the answers are compared with each other and with
   onnxruntime run on the source file.

Each step is timed; its peak resident set (ru_maxrss of the process, from wait4; VmHWM for the server) counts
memory-mapped file pages too, so beside it is the peak anonymous memory (RssAnon sampled every 20 ms): what a
step allocated rather than mapped from the page cache. Prints a markdown table; saves
bench/results/large_model.json. Needs about 3 × the model's size on disk (source, unfolded, folded) in --work
(default: a temporary directory, removed at the end unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from bench.common import machine_description, markdown_table, save_results
from bench.large_model_graph import DATA_FILE, MODEL_FILE, Shape
from bench.processes import ROOT, free_port
from bnfold.contract.op_count import count_op

SAMPLE_S = 0.02
SERVE_TIMEOUT_S = 600.0
GB = 1e9


@dataclass
class Step:
    """One measured step: wall seconds, peak RSS and peak anonymous RSS in bytes."""

    name: str
    seconds: float
    peak_rss: int
    peak_anon: int
    note: str = ""


class AnonSampler:
    """Samples RssAnon of a process every SAMPLE_S seconds in a thread; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kib(self.pid, "RssAnon") * 1024)
            time.sleep(SAMPLE_S)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def status_kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def environment() -> dict[str, str]:
    """This checkout's code first on the path of every child process."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":")}


def run_step(name: str, command: list[str], cwd: Path) -> tuple[Step, str]:
    """Run `command` in `cwd`; (its Step, its stdout). Fails with its stderr when it exits non-zero."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, cwd=cwd, env=environment(), stdout=out, stderr=err)
        sampler = AnonSampler(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        peak_anon = sampler.stop()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if process.returncode != 0:
        raise RuntimeError(f"{name} exited {process.returncode}: {stderr.strip()[-2000:]}")
    return Step(name, seconds, usage.ru_maxrss * 1024, peak_anon), stdout


def infer(port: int, version: str, x: np.ndarray) -> np.ndarray:
    """One V2 JSON infer request for `version` of model m; the first output as an array."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/m/versions/{version}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        output = json.loads(response.read())["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def serve_step(repository: Path, x: np.ndarray) -> tuple[Step, dict[str, np.ndarray]]:
    """`bnfold serve` from start to ready (both variants loaded and checked), then one request per variant;
    stopped with SIGTERM."""
    port = free_port()
    command = [sys.executable, "-m", "bnfold.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {**environment(), "BNFOLD_REPOSITORY": str(repository), "BNFOLD_GRPC_PORT": str(free_port()),
           "BNFOLD_LOG_LEVEL": "warning"}  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = AnonSampler(process.pid)
        try:
            while not _ready(port):
                if process.poll() is not None or time.perf_counter() - start > SERVE_TIMEOUT_S:
                    log.seek(0)
                    raise RuntimeError(f"bnfold serve did not become ready: {log.read().decode()[-2000:]}")
                time.sleep(0.1)
            ready = time.perf_counter() - start
            answers = {version: infer(port, version, x) for version in ("folded", "unfolded")}
            peak = status_kib(process.pid, "VmHWM") * 1024
        finally:
            process.terminate()
            process.wait(timeout=60)
            peak_anon = sampler.stop()
    note = f"ready after {ready:.1f} s"
    return Step("bnfold serve (load, 2 requests)", time.perf_counter() - start, peak, peak_anon, note), answers


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def onnxruntime_direct(source: Path, x: np.ndarray) -> np.ndarray:
    """The source model itself in onnxruntime (optimisations off, no pre-packing): the reference."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def sizes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in sorted(directory.iterdir()) if path.is_file()}


def benchmark(work: Path, shape: Shape) -> dict[str, Any]:
    source, other, third = work / "src", work / "other", work / "third"
    for directory in (other, third):
        directory.mkdir(parents=True)
    python = sys.executable
    build = [python, "-m", "bench.large_model_graph", str(source), "--hidden", str(shape.hidden)]
    steps = [run_step("write the source (streamed)", build, ROOT)[0]]
    model = f"../src/{MODEL_FILE}"
    fold_command = [python, "-m", "bnfold.cli", "fold-and-export", "--model", model, "--out", "../repo", "--json"]
    step, stdout = run_step("bnfold fold-and-export", fold_command, other)
    summary = json.loads(stdout)
    step.note = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in summary["step_seconds"].items())
    steps.append(step)
    entry = work / "repo" / "m"
    step, stdout = run_step("bnfold verify", [python, "-m", "bnfold.cli", "verify", "../repo/m"], third)
    verified = next(line for line in stdout.splitlines() if "folded matches unfolded" in line)
    step.note = verified.lstrip("✓ ")
    steps.append(step)
    x = np.random.default_rng(7).standard_normal((4, 3, shape.spatial, shape.spatial), dtype=np.float32)
    step, answers = serve_step(work / "repo", x)
    steps.append(step)
    reference = onnxruntime_direct(source / MODEL_FILE, x)
    manifest = json.loads((entry / "model.json").read_text())
    source_graph = onnx.load_model(str(source / MODEL_FILE), load_external_data=False)
    return {
        "shape": asdict(shape),
        "steps": [asdict(step) for step in steps],
        "source_files": sizes(source),
        "entry_files": sizes(entry),
        "batchnorm_nodes": {
            "source": count_op(source_graph),
            **{variant: manifest["variants"][variant]["batchnorm_nodes"] for variant in ("unfolded", "folded")},
        },
        "fold_summary": summary["fold_summary"],
        "max_error": {
            "fold_report_outputs": manifest["fold_report"]["max_output_error"],
            "fold_and_export_folded_vs_unfolded": summary["max_abs_error"]["folded"],
            "served_folded_vs_served_unfolded": float(np.max(np.abs(answers["folded"] - answers["unfolded"]))),
            "served_unfolded_vs_onnxruntime_on_source": float(np.max(np.abs(answers["unfolded"] - reference))),
            "max_abs_reference": float(np.max(np.abs(reference))),
        },
    }


def print_table(result: dict[str, Any]) -> None:
    source = sum(result["source_files"].values())
    entry = result["entry_files"]
    print(f"source: {MODEL_FILE} + {DATA_FILE} = {source / GB:.2f} GB on disk; entry: "
          + ", ".join(f"{name} {size / GB:.3f} GB" for name, size in entry.items()))  # fmt: skip
    rows = [
        [step["name"], f"{step['seconds']:.1f}", f"{step['peak_rss'] / GB:.2f}", f"{step['peak_anon'] / GB:.2f}",
         step["note"].replace("|", "\\|")]
        for step in result["steps"]
    ]  # fmt: skip
    print(markdown_table(["step", "seconds", "peak RSS GB", "peak anon GB", "notes"], rows))
    counts = result["batchnorm_nodes"]
    print(f"\nBatchNormalization nodes: source {counts['source']}, unfolded.onnx {counts['unfolded']}, "
          f"folded.onnx {counts['folded']} ({result['fold_summary']})")  # fmt: skip
    print(markdown_table(["max |Δ|", "value"], [[key, f"{value:.3e}"] for key, value in result["max_error"].items()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=Shape.hidden, help="outputs of the big Gemm (33600: 2.2 GB)")
    parser.add_argument("--work", type=Path, help="directory for the files (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    arguments = parser.parse_args()
    shape = Shape(hidden=arguments.hidden)
    work = Path(tempfile.mkdtemp(prefix="bnfold-large-", dir=arguments.work))
    try:
        result = benchmark(work, shape)
    finally:
        if not arguments.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["machine"] = machine_description(ram_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    print_table(result)
    name = "large_model" if shape == Shape() else "large_model_small"  # a smaller run keeps the real one
    print(f"\nsaved {save_results(name, result)}")


if __name__ == "__main__":
    main()
