"""Shared helpers of the ONNX tests: honest references (no graph optimisation) and random BN statistics."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import nn


def run_ort(model: onnx.ModelProto, feeds: dict[str, NDArray[np.generic]]) -> list[NDArray[np.generic]]:
    """Run `model` with onnxruntime on CPU with every graph optimisation disabled (no silent fusions)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, feeds)]


def randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm random γ, β, μ and σ² (σ² in [0.2, 2.2]) so that folding is really exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            if module.running_mean is not None and module.running_var is not None:
                channels = module.num_features
                module.running_mean.copy_(torch.randn(channels, generator=generator))
                module.running_var.copy_(torch.rand(channels, generator=generator) * 2 + 0.2)
                if module.affine:
                    module.weight.copy_(torch.randn(channels, generator=generator))
                    module.bias.copy_(torch.randn(channels, generator=generator))
