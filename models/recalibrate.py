"""Population statistics for inference-time BatchNorm (Ioffe & Szegedy 2015, Algorithm 2).

Instead of the training-time moving average, every BN's running statistics are re-estimated over a
calibration set cut into B mini-batches of equal size. With x_b the BN's input in mini-batch b and m the
number of values per channel in a mini-batch (N for (N, C) inputs, N·H·W for (N, C, H, W) inputs):

    μ_b = mean(x_b),   v_b = mean((x_b − μ_b)²)            (biased, per channel)
    running_mean = (1/B) Σ_b μ_b
    running_var  = m/(m−1) · (1/B) Σ_b v_b                 (unbiased population estimate)

The mini-batch statistics are those of training mode: every BN upstream of the one measured normalises
with its own mini-batch statistics, exactly as during training. The caller's model is not changed; a
recalibrated copy is returned with a per-BN report of how far the statistics moved.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class StatisticsShift:
    """How far one BN's statistics moved.

    mean_shift: max_c |μ_new − μ_old| / √(σ²_old + ε)   (in units of the old standard deviation)
    var_ratio_min / var_ratio_max: the range of σ²_new / σ²_old over channels.
    """

    bn: str
    mean_shift: float
    var_ratio_min: float
    var_ratio_max: float


@dataclass
class BatchStatistics:
    """Running sums of one BN's per-batch means and biased variances."""

    mean_sum: Tensor | None = None
    var_sum: Tensor | None = None
    batches: int = 0
    values_per_channel: int = 0

    def add(self, x: Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != 1]  # every axis but the channel axis
        x64 = x.detach().double()
        mean = x64.mean(dim=dims)
        var = x64.var(dim=dims, unbiased=False)
        self.mean_sum = mean if self.mean_sum is None else self.mean_sum + mean
        self.var_sum = var if self.var_sum is None else self.var_sum + var
        self.batches += 1
        self.values_per_channel = x.numel() // x.shape[1]

    def population(self) -> tuple[Tensor, Tensor]:
        """(mean of batch means, m/(m−1) · mean of batch variances) in float64."""
        if self.mean_sum is None or self.var_sum is None:
            raise ValueError("this BatchNorm saw no calibration batch")
        m = self.values_per_channel
        if m < 2:
            raise ValueError("a calibration batch has one value per channel; use a batch size of at least 2")
        return self.mean_sum / self.batches, self.var_sum / self.batches * (m / (m - 1))


@dataclass
class RecalibrationResult:
    """The recalibrated copy and, per BN in module order, how far its statistics moved."""

    model: nn.Module
    shifts: list[StatisticsShift] = field(default_factory=list)


def recalibratable(model: nn.Module) -> Iterator[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The plain BNs (exact types) that keep running statistics, as (qualified name, module)."""
    for name, module in model.named_modules():
        if type(module) in PLAIN_BATCHNORMS and module.track_running_stats:
            yield name, module


def mini_batches(x: Tensor, batch_size: int) -> list[Tensor]:
    """Equal-sized mini-batches of x; the incomplete remainder is dropped (one batch of all when x is smaller)."""
    if batch_size < 2:
        raise ValueError(f"batch size {batch_size} is too small for BatchNorm statistics; use at least 2")
    if len(x) <= batch_size:
        return [x]
    full = len(x) // batch_size * batch_size
    return list(x[:full].split(batch_size))


def recalibrate(model: nn.Module, calibration: Tensor, batch_size: int = 64) -> RecalibrationResult:
    """A copy of `model` in eval mode whose BNs hold population statistics estimated on `calibration`."""
    probe = copy.deepcopy(model)
    statistics = _collect(probe, mini_batches(calibration, batch_size))
    result = copy.deepcopy(model).eval()
    shifts = []
    for name, bn in recalibratable(result):
        mean, var = statistics[name].population()
        shifts.append(_shift(name, bn, mean, var))
        assert bn.running_mean is not None and bn.running_var is not None  # guaranteed by recalibratable
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
    return RecalibrationResult(model=result, shifts=shifts)


def _collect(probe: nn.Module, batches: list[Tensor]) -> dict[str, BatchStatistics]:
    """Run the batches through `probe` with its BNs in training mode, recording each BN's input statistics."""
    probe.eval()
    statistics: dict[str, BatchStatistics] = {}
    handles = []
    for name, bn in recalibratable(probe):
        bn.train()  # only the BNs: dropout and friends stay in eval mode
        statistics[name] = BatchStatistics()
        record = statistics[name]
        handles.append(bn.register_forward_pre_hook(lambda _m, args, r=record: r.add(args[0])))
    try:
        with torch.no_grad():
            for batch in batches:
                probe(batch)
    finally:
        for handle in handles:
            handle.remove()
    return statistics


def _shift(name: str, bn: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor) -> StatisticsShift:
    assert bn.running_mean is not None and bn.running_var is not None
    old_mean, old_var = bn.running_mean.double(), bn.running_var.double()
    mean_shift = ((mean - old_mean).abs() / (old_var + bn.eps).sqrt()).max().item()
    ratio = var / old_var.clamp_min(1e-30)
    return StatisticsShift(name, mean_shift, ratio.min().item(), ratio.max().item())
