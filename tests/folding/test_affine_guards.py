"""Per-channel multiply/add chains fold only where exact: every guard refuses with its reason, and the
folded model computes what the original does either way (random buffers in every test)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnfold.folding import fold
from bnfold.folding.plan import not_folded, output_needed_elsewhere, pads_with_zeros
from bnfold.folding.report import Action, FoldEntry
from tests.folding.helpers import FP32_REL
from tests.nets.frozen_batchnorm import FrozenBatchNorm2d, randomise_frozen

LEFT = "left as it is"


class Scaled(nn.Module):
    """conv → x · factor (+ addend) with buffers of any shape; `before` puts the map in front of the conv."""

    def __init__(
        self, factor: tuple[int, ...], addend: tuple[int, ...] | None = None, padding: int = 0, before: bool = False
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(sum(factor) + padding)
        self.conv = nn.Conv2d(4, 4, 3, padding=padding)
        self.register_buffer("factor", torch.rand(factor, generator=generator) + 0.5)
        self.register_buffer("addend", None if addend is None else torch.randn(addend, generator=generator))
        self.before = before

    def affine(self, x: Tensor) -> Tensor:
        return x * self.factor if self.addend is None else x * self.factor + self.addend

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.affine(x)) if self.before else self.affine(self.conv(x))


def folded(model: nn.Module, x: Tensor | None = None) -> tuple[list[FoldEntry], nn.Module]:
    """Fold `model` (eval) on a random batch of 2 and check the folded model against it on a batch of 3."""
    model = model.eval()
    result = fold(model, (torch.randn(2, 4, 8, 8) if x is None else x,))
    probe = torch.randn(3, *(x.shape[1:] if x is not None else (4, 8, 8)))
    with torch.no_grad():
        expected = model(probe)
        assert (result.model(probe) - expected).abs().max() <= FP32_REL * expected.abs().max()
    return list(result.report), result.model


def only(entries: list[FoldEntry]) -> FoldEntry:
    assert len(entries) == 1, entries
    return entries[0]


def test_forward_fold_refused_when_the_conv_pads_with_zeros() -> None:
    entry = only(folded(Scaled((1, 4, 1, 1), (1, 4, 1, 1), padding=1, before=True))[0])
    assert (entry.action, entry.kind, entry.sources) == (Action.KEPT, "affine", ("mul", "add"))
    assert entry.reason == not_folded(
        "the model input 'x' is not a layer module", "layer conv: " + pads_with_zeros("the conv", "padding=(1, 1)")
    )


def test_forward_fold_into_an_unpadded_conv() -> None:
    entry = only(folded(Scaled((4, 1, 1), (4, 1, 1), padding=0, before=True))[0])
    assert (entry.action, entry.target, entry.reason) == (Action.FOLDED_INTO_NEXT, "conv", None)
    assert entry.max_error is not None and entry.max_error < 1e-5


class TwoReaders(nn.Module):
    """conv → frozen BN, and the conv's raw output is read again by the residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(4, 4, 1), randomise_frozen(nn.Sequential(FrozenBatchNorm2d(4)), seed=9)[0]

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.norm(y) + y


def test_multi_consumer_producer_is_not_folded_into() -> None:
    entry = only(folded(TwoReaders())[0])
    assert (entry.bn, entry.kind, entry.action) == ("norm", "frozen_batchnorm", Action.KEPT)
    assert entry.reason == not_folded(
        output_needed_elsewhere("layer conv", "it also feeds a call of add (add_1)"),
        "a call of add (add_1) is not a layer module taking only the BN output",
    )


def test_scalar_operand_is_left_with_its_reason_and_a_python_number_is_not_a_site() -> None:
    entry = only(folded(Scaled(()))[0])
    assert entry.action is Action.KEPT
    assert (
        entry.reason
        == f"the factor of shape () is a scalar, one number for every channel, not a per-channel map; {LEFT}"
    )

    class Halved(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x) * 0.5

    assert folded(Halved())[0] == []


def test_full_tensor_operand_is_left() -> None:
    entry = only(folded(Scaled((4, 6, 6)))[0])
    assert entry.action is Action.KEPT
    assert entry.reason == (
        f"the factor of shape (4, 6, 6) is a full tensor: it varies along axes [2, 3], not only along the "
        f"channel axis 1; {LEFT}"
    )


def test_non_channel_broadcast_is_left() -> None:
    entry = only(folded(Scaled((1, 4, 1, 1), (6,)))[0])
    assert entry.action is Action.KEPT
    assert entry.reason == (
        f"the addend of shape (6,) broadcasts along axes other than the channel axis 1 of (2, 4, 6, 6); {LEFT}"
    )


class BatchScaled(nn.Module):
    """x · mean of x over batch and space: a per-channel shape computed from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y * y.mean((0, 2, 3), keepdim=True)


def test_non_constant_operand_is_left() -> None:
    entry = only(folded(BatchScaled())[0])
    assert (entry.bn, entry.action, entry.sources) == ("mul", Action.KEPT, ("mul",))
    assert entry.reason == (
        "its factor mean is computed from the model input (e.g. batch statistics), not from buffers or "
        f"parameters alone, so it is not a fixed map; {LEFT}"
    )


def test_training_mode_never_folds() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 1), randomise_frozen(nn.Sequential(FrozenBatchNorm2d(4)), seed=1)[0])
    result = fold(model.train(), (torch.randn(2, 4, 8, 8),))
    entry = only(list(result.report))
    assert (entry.bn, entry.action) == ("1", Action.KEPT)
    assert entry.reason == "FrozenBatchNorm2d is in training mode; call model.eval() before folding"


class LayerScaledLinear(nn.Module):
    """Linear → per-feature layer scale (a Parameter, so the multiply is traced, not pre-computed)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.gamma = nn.Parameter(torch.rand(5, generator=torch.Generator().manual_seed(3)) + 0.5)
        self.register_buffer("beta", torch.randn(5, generator=torch.Generator().manual_seed(4)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * self.gamma.reshape(1, -1) + self.beta


def test_linear_layer_scale_folds_into_the_linear() -> None:
    model = LayerScaledLinear().eval()
    entries, folded_model = folded(model, torch.randn(2, 6))
    entry = only(entries)
    assert (entry.kind, entry.action, entry.target, entry.sources) == (
        "affine",
        Action.FOLDED_INTO_PREVIOUS,
        "fc",
        ("mul", "add"),
    )
    expected_weight = model.fc.weight.detach().double() * model.gamma.detach().double()[:, None]
    assert torch.allclose(folded_model.get_submodule("fc").weight.double(), expected_weight, rtol=1e-6, atol=0)


class SharedConv(nn.Module):
    """One conv called twice, each call followed by its own frozen BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.a, self.b = randomise_frozen(nn.Sequential(FrozenBatchNorm2d(4), FrozenBatchNorm2d(4)), seed=6)

    def forward(self, x: Tensor) -> Tensor:
        return self.a(self.conv(x)) - self.b(self.conv(x))


def test_shared_conv_gets_a_copy_per_call_site() -> None:
    entries, _ = folded(SharedConv())
    assert [(e.bn, e.action) for e in entries] == [
        ("a", Action.FOLDED_INTO_PREVIOUS),
        ("b", Action.FOLDED_INTO_PREVIOUS),
    ]
    assert len({e.target for e in entries}) == 2
