"""Build small model repositories for the service tests with onnx.helper and numpy (no torch, no folding).

The model: input (N, 1, 8, 8) → Conv(4, 3×3, pad 1) → BatchNormalization → Relu → GlobalAveragePool →
Flatten → Gemm → logits (N, 3). The folded variant is the same graph with the BN folded by hand, in float64:

    s = γ / √(σ² + ε),  W' = W · s (per output channel),  b' = (b − μ) · s + β

BN statistics (γ, β, μ, σ²) are random in every build.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EPSILON = 1e-5
CHANNELS = 4
CLASSES = 3
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class Weights:
    """Random parameters of the Conv → BN → … → Gemm model (float64 master copies)."""

    conv_w: np.ndarray  # (C, 1, 3, 3)
    conv_b: np.ndarray  # (C,)
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    gemm_w: np.ndarray  # (CLASSES, C)
    gemm_b: np.ndarray  # (CLASSES,)

    @classmethod
    def random(cls, rng: np.random.Generator) -> Weights:
        sign = rng.choice([-1.0, 1.0], CHANNELS)
        return cls(
            conv_w=rng.normal(0, 0.5, (CHANNELS, 1, 3, 3)),
            conv_b=rng.normal(0, 0.3, CHANNELS),
            gamma=sign * rng.uniform(0.5, 1.5, CHANNELS),
            beta=rng.normal(0, 0.5, CHANNELS),
            mean=rng.normal(0, 0.5, CHANNELS),
            var=rng.uniform(0.3, 2.0, CHANNELS),
            gemm_w=rng.normal(0, 1.0, (CLASSES, CHANNELS)),
            gemm_b=rng.normal(0, 0.1, CLASSES),
        )

    def folded_conv(self) -> tuple[np.ndarray, np.ndarray]:
        scale = self.gamma / np.sqrt(self.var + EPSILON)
        return self.conv_w * scale[:, None, None, None], (self.conv_b - self.mean) * scale + self.beta


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def build_graph(weights: Weights, folded: bool, clip_input: float | None = None) -> onnx.ModelProto:
    """The unfolded (with BatchNormalization) or hand-folded model; `clip_input` plants a hidden defect."""
    conv_w, conv_b = weights.folded_conv() if folded else (weights.conv_w, weights.conv_b)
    inits = [_init("conv_w", conv_w), _init("conv_b", conv_b), _init("gemm_w", weights.gemm_w)]
    inits.append(_init("gemm_b", weights.gemm_b))
    nodes = []
    source = "input"
    if clip_input is not None:
        inits += [_init("clip_lo", np.array(-clip_input)), _init("clip_hi", np.array(clip_input))]
        nodes.append(helper.make_node("Clip", ["input", "clip_lo", "clip_hi"], ["clipped"]))
        source = "clipped"
    nodes.append(helper.make_node("Conv", [source, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]))
    features = "conv"
    if not folded:
        for name, value in (("gamma", weights.gamma), ("beta", weights.beta)):
            inits.append(_init(name, value))
        inits += [_init("mean", weights.mean), _init("var", weights.var)]
        nodes.append(
            helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"], epsilon=EPSILON)
        )
        features = "bn"
    nodes += [
        helper.make_node("Relu", [features], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def reference_logits(weights: Weights, x: np.ndarray) -> np.ndarray:
    """The model's output computed in float64 numpy, independent of onnxruntime (Conv with pad 1)."""
    n = x.shape[0]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # (N, 1, 8, 8, 3, 3)
    conv = np.einsum("nihwkl,cikl->nchw", windows, weights.conv_w) + weights.conv_b[None, :, None, None]
    scale = weights.gamma / np.sqrt(weights.var + EPSILON)
    bn = (conv - weights.mean[None, :, None, None]) * scale[None, :, None, None] + weights.beta[None, :, None, None]
    pooled = np.maximum(bn, 0).reshape(n, CHANNELS, -1).mean(axis=2)  # (N, C)
    return pooled @ weights.gemm_w.T + weights.gemm_b


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_entry(
    repository: Path,
    name: str,
    rng: np.random.Generator,
    task: str = "classification",
    folded_model: onnx.ModelProto | None = None,
    weights: Weights | None = None,
) -> tuple[Weights, dict[str, Any]]:
    """Write NAME/{unfolded,folded}.onnx, calibration.npz and model.json; returns the weights and manifest."""
    weights = weights or Weights.random(rng)
    entry = repository / name
    entry.mkdir(parents=True)
    onnx.save(build_graph(weights, folded=False), entry / "unfolded.onnx")
    onnx.save(folded_model or build_graph(weights, folded=True), entry / "folded.onnx")
    calibration = rng.uniform(-1, 1, (CALIBRATION_BATCH, 1, 8, 8)).astype(np.float32)
    np.savez(entry / "calibration.npz", input=calibration)
    manifest = manifest_for(name, task, entry)
    (entry / "model.json").write_text(json.dumps(manifest, indent=2))
    return weights, manifest


def manifest_for(name: str, task: str, entry: Path) -> dict[str, Any]:
    folded_bn = sum(node.op_type == "BatchNormalization" for node in onnx.load(entry / "folded.onnx").graph.node)
    return {
        "format": "bnfold-repository/1",
        "name": name,
        "task": task,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, CLASSES]}],
        "variants": {
            "unfolded": {"file": "unfolded.onnx", "sha256": _sha256(entry / "unfolded.onnx"), "batchnorm_nodes": 1},
            "folded": {"file": "folded.onnx", "sha256": _sha256(entry / "folded.onnx"), "batchnorm_nodes": folded_bn},
        },
        "tolerance": {"atol": 1e-5, "rtol": 1e-4},
        "calibration": {"file": "calibration.npz", "batch_size": CALIBRATION_BATCH},
        "fold_report": {"entries": [], "max_output_error": 0.0, "summary": "1/1 BatchNorm folded, 0 lowered, 0 kept"},
        "provenance": {"source": "tests:conv_bn", "weights_sha256": None, "created": "2026-11-25T02:00:00Z"},
        "metrics": {},
    }
