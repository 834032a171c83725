"""Shared helpers of the folding tests: random BN statistics, BN counting, and the four standard checks."""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnfold.folding import FoldResult, fold
from bnfold.folding.compare import discrepancy
from bnfold.folding.torch_batchnorm import FUNCTIONAL_BATCHNORMS

FP32_REL = 1e-5  # the float32 agreement bar: max |folded − unfolded| ≤ 1e-5 · max |unfolded|


@torch.no_grad()
def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random γ ∈ ±U(0.5, 1.5), β ~ U(−1, 1), μ ~ U(−1, 1), σ² ~ U(0.3, 2) for every BN (mutates, returns)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if not isinstance(module, _BatchNorm):
            continue
        channels = module.num_features

        def uniform(low: float, high: float, n: int = channels) -> Tensor:
            return low + (high - low) * torch.rand(n, generator=generator)

        sign = torch.where(torch.rand(channels, generator=generator) < 0.3, -1.0, 1.0)
        values = {"weight": sign * uniform(0.5, 1.5), "bias": uniform(-1, 1)}
        values |= {"running_mean": uniform(-1, 1), "running_var": uniform(0.3, 2.0)}
        for name, value in values.items():
            tensor = getattr(module, name)
            if tensor is not None:
                tensor.copy_(value.to(tensor.dtype))
    return model


def batchnorm_count(model: nn.Module) -> int:
    """BatchNorm calls left: BN module calls plus functional batch_norm calls in a GraphModule's graph,
    or the BN modules of a plain module."""
    if not isinstance(model, fx.GraphModule):
        return sum(isinstance(module, _BatchNorm) for module in model.modules())
    count = 0
    for node in model.graph.nodes:
        if (node.op == "call_module" and isinstance(model.get_submodule(str(node.target)), _BatchNorm)) or (
            node.op == "call_function" and node.target in FUNCTIONAL_BATCHNORMS
        ):
            count += 1
    return count


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, Tensor], batchnorms_before: int) -> None:
    """The caller's model keeps its exact state_dict and all its BatchNorm modules."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"caller's {name} was modified"
    assert batchnorm_count(model) == batchnorms_before


def relative_error(model_a: nn.Module, model_b: nn.Module, *inputs: Tensor) -> float:
    """max |a(x) − b(x)| / max |b(x)|, computed in float64."""
    with torch.no_grad():
        a, b = model_a(*inputs), model_b(*inputs)
    return discrepancy(a.double().numpy(), b.double().numpy()).max_rel


def check_fold(
    model: nn.Module, inputs: tuple[Tensor, ...], *, remaining: int, other_batch: int = 5, **options: bool
) -> FoldResult:
    """Fold and assert: `remaining` BNs left, output within FP32_REL of the unfolded model on the example
    inputs and on a fresh batch of another size, and the caller's model unchanged."""
    before, count_before = snapshot(model), batchnorm_count(model)
    result = fold(model, inputs, **options)
    assert batchnorm_count(result.model) == remaining
    if not any(module.training for module in model.modules()):  # new modules are in eval mode too
        assert not any(module.training for module in result.model.modules())
    assert relative_error(result.model, model, *inputs) <= FP32_REL
    generator = torch.Generator().manual_seed(123)
    fresh = tuple(torch.randn((other_batch, *x.shape[1:]), generator=generator, dtype=x.dtype) for x in inputs)
    assert relative_error(result.model, model, *fresh) <= FP32_REL
    assert_unchanged(model, before, count_before)
    return result


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
