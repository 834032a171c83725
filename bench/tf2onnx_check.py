"""Real tf2onnx conversions of Keras models through bnfold: what tf2onnx writes for BatchNorm, and what bnfold folds.

Not part of the test suite (it needs TensorFlow, which bnfold's environment never has). TensorFlow and
tf2onnx live in a virtualenv of their own, built on first use under $BNFOLD_TF2ONNX_CACHE (default
~/.cache/bnfold/tf2onnx/venv, bench/virtualenvs.py). There bench/tf2onnx_keras.py builds the Keras models
(random BN statistics, dynamic batch), converts each one three ways (tf2onnx's default opset; opset 13;
default opset with tf2onnx's ONNX optimizers off) and saves Keras's own prediction on a random batch.

Then, in bnfold's environment, per conversion: the real `bnfold fold-and-export --model FILE.onnx` and
`bnfold verify` subprocesses, the fold report of the entry's model.json (maps found, folded, worst per-map
error, max |folded − unfolded|), the ops left in folded.onnx, and max |folded − Keras| with folded.onnx run
by onnxruntime (all graph optimisations off) on the batch Keras predicted. Prints a markdown table and saves
bench/results/tf2onnx_check.json.

    .venv/bin/python -m bench.tf2onnx_check [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bench.common import machine_description, markdown_table, save_results
from bench.virtualenvs import cached_virtualenv
from bnfold.contract.op_count import count_op
from bnfold.folding.onnx_measure import run_all_optimisations_off

# The newest releases at the time of writing, which install together (TensorFlow 2.21 brings Keras 3.15).
REQUIREMENTS = ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.0"]
BUILDER = Path(__file__).resolve().parent / "tf2onnx_keras.py"
BIN = Path(sys.executable).parent
VARIANT_LABELS = {"default": "default opset", "opset13": "opset 13", "noopt": "optimizers off"}
COUNTED_OPS = ("BatchNormalization", "Mul", "Add", "Transpose")


def cache_dir() -> Path:
    return Path(os.environ.get("BNFOLD_TF2ONNX_CACHE") or Path.home() / ".cache" / "bnfold" / "tf2onnx")


def build_models(work: Path) -> dict[str, Any]:
    """Build and convert the Keras models into `work` in the TensorFlow virtualenv; its models.json."""
    python = cached_virtualenv(cache_dir() / "venv", REQUIREMENTS)
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    environment.pop("PYTHONPATH", None)  # nothing of bnfold in TensorFlow's interpreter
    subprocess.run([str(python), str(BUILDER), str(work)], check=True, env=environment, capture_output=True)
    built: dict[str, Any] = json.loads((work / "models.json").read_text())
    return built


def encoding(model: onnx.ModelProto, entries: list[dict[str, Any]]) -> str:
    """How the graph writes each BN-like map of the report: its ops, its constant's shape (the channel
    dim as C), and whether its input comes from a Transpose; plus BatchNormalization nodes."""
    nodes = {node.name: node for node in model.graph.node}
    producers = {output: node for node in model.graph.node for output in node.output}
    shapes = {initializer.name: tuple(initializer.dims) for initializer in model.graph.initializer}
    found: Counter[str] = Counter()
    for entry in entries:
        sources = [nodes[name] for name in entry.get("sources", []) if name in nodes]
        if not sources or entry.get("kind") == "batchnorm":
            found["BatchNormalization"] += 1
            continue
        shape = next((shapes[name] for name in sources[0].input if name in shapes), ())
        channels = max(shape, default=1)
        pattern = "+".join(node.op_type for node in sources)
        dims = ["C" if size == channels and size > 1 else str(size) for size in shape]
        pattern += f" ({dims[0]},)" if len(dims) == 1 else f" ({','.join(dims)})"
        data = next((name for name in sources[0].input if name not in shapes), None)
        producer = producers.get(data or "")
        if producer is not None and producer.op_type == "Transpose":
            pattern += " after Transpose"
        elif data in {value.name for value in model.graph.input}:
            pattern += " on the input"
        found[pattern] += 1
    return "; ".join(f"{count}× {pattern}" for pattern, count in found.items() if count)


def check(work: Path, repo: Path, name: str, variant: str, described: dict[str, Any]) -> dict[str, Any]:
    """Fold one converted model with the bnfold CLI and measure it."""
    source = work / described["files"][variant]["file"]
    entry = f"{name}_{variant}"
    command = [str(BIN / "bnfold"), "fold-and-export", "--model", str(source), "--out", str(repo), "--name", entry]
    ran = subprocess.run([*command, "--json"], capture_output=True, text=True)
    if ran.returncode != 0:
        return {"model": name, "variant": variant, "error": (ran.stderr or ran.stdout).strip().splitlines()[-1]}
    manifest = json.loads((repo / entry / "model.json").read_text())
    report = manifest["fold_report"]
    entries = report["entries"]
    unfolded = onnx.load(str(repo / entry / "unfolded.onnx"))
    folded = onnx.load(str(repo / entry / "folded.onnx"))
    batch = np.load(work / f"{name}.input.npy")
    keras_output = np.load(work / f"{name}.keras.npy")
    feeds = {described["input"]: batch}
    outputs = {
        variant_name: next(iter(run_all_optimisations_off(graph, feeds).values()))
        for variant_name, graph in (("unfolded", unfolded), ("folded", folded))
    }
    errors = [e["max_error"] for e in entries if e.get("max_error") is not None]
    return {
        "model": name,
        "variant": variant,
        "opset": described["files"][variant]["opset"],
        "keras_batchnorms": len(described["batchnorms"]),
        "batchnorm_nodes": count_op(unfolded),
        "maps": len(entries),
        "folded": sum(e["action"].startswith("folded") for e in entries),
        "kept": [{"bn": e["bn"], "reason": e["reason"]} for e in entries if e["action"] == "kept"],
        "encoding": encoding(unfolded, entries),
        "worst_fold_error": max(errors, default=None),
        "max_output_error": report["max_output_error"],
        "max_abs_vs_keras": {key: float(np.max(np.abs(value - keras_output))) for key, value in outputs.items()},
        "max_abs_keras": float(np.max(np.abs(keras_output))),
        "ops_before": dict(Counter(node.op_type for node in unfolded.graph.node)),
        "ops_left": {op: count_op(folded, op) for op in COUNTED_OPS},
        "summary": report["summary"],
    }


def _format(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def table(rows: list[dict[str, Any]]) -> str:
    header = [
        "model",
        "conversion",
        "BN layers",
        "tf2onnx encoding",
        "folded / total",
        "worst fold error",
        "max |folded − Keras|",
        "Mul/Add/BN left",
    ]
    cells = []
    for row in rows:
        label = f"{VARIANT_LABELS[row['variant']]}"
        if "error" in row:
            cells.append([row["model"], label, "", "", "error", row["error"], "", ""])
            continue
        left = row["ops_left"]
        vs_keras = row["max_abs_vs_keras"]
        fused = row["keras_batchnorms"] - row["maps"]
        described = row["encoding"] or "none"
        if fused > 0:
            described += f"; {fused} fused into Conv by the converter"
        cells.append(
            [
                row["model"],
                f"{label} (opset {row['opset']})",
                row["keras_batchnorms"],
                described,
                f"{row['folded']}/{row['maps']}",
                _format(row["worst_fold_error"]),
                f"{_format(vs_keras['folded'])} (unfolded {_format(vs_keras['unfolded'])})",
                f"{left['Mul']}/{left['Add']}/{left['BatchNormalization']}",
            ]
        )
    return markdown_table(header, cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="where the .onnx files and the repository go")
    args = parser.parse_args()
    work = args.work or cache_dir() / "models"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    built = build_models(work)
    repo = work / "repository"
    rows = [
        check(work, repo, name, variant, described)
        for name, described in built["models"].items()
        for variant in described["files"]
    ]
    verified = subprocess.run([str(BIN / "bnfold"), "verify", str(repo)], capture_output=True, text=True)
    verdict = verified.stdout.strip().splitlines()[-1] if verified.stdout.strip() else verified.stderr.strip()
    print(table(rows))
    print(f"\nbnfold verify {repo}: {verdict} (exit {verified.returncode})")
    for row in rows:
        for kept in row.get("kept", []):
            print(f"kept in {row['model']} ({row['variant']}): {kept['bn']}: {kept['reason']}")
    payload = {
        "machine": machine_description(converters=built["versions"], requirements=REQUIREMENTS),
        "verify": {"exit_code": verified.returncode, "verdict": verdict},
        "rows": rows,
    }
    print(f"saved {save_results('tf2onnx_check', payload)}")


if __name__ == "__main__":
    main()
