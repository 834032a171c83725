"""Property-based: any Conv/ConvTranspose (1-3 D, groups, stride, dilation, padding and padding mode, bias)
next to a BN with random statistics folds exactly where folding is exact, and is lowered otherwise."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from bnfold.folding import Action
from bnfold.folding.torch_rules import reads_zero_padding
from tests.folding.helpers import check_fold, randn, randomise_batchnorm

CONV = {(1, False): nn.Conv1d, (2, False): nn.Conv2d, (3, False): nn.Conv3d}
CONV |= {(1, True): nn.ConvTranspose1d, (2, True): nn.ConvTranspose2d, (3, True): nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


@dataclass(frozen=True)
class Case:
    dims: int
    transposed: bool
    bn_first: bool
    groups: int
    c_in: int
    c_out: int
    options: dict[str, object]
    size: int
    seed: int

    def build(self) -> nn.Module:
        conv = CONV[(self.dims, self.transposed)](self.c_in, self.c_out, **self.options)  # type: ignore[arg-type]
        layers = [BN[self.dims](self.c_in), conv] if self.bn_first else [conv, BN[self.dims](self.c_out)]
        return randomise_batchnorm(nn.Sequential(*layers), seed=self.seed).eval()


@st.composite
def cases(draw: st.DrawFn) -> Case:
    dims, transposed, bn_first = draw(st.sampled_from([1, 2, 3])), draw(st.booleans()), draw(st.booleans())
    groups = draw(st.integers(1, 3))
    kernel, stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    options: dict[str, object] = {"kernel_size": kernel, "stride": stride, "dilation": dilation, "groups": groups}
    options["bias"] = draw(st.booleans())
    options["padding"] = draw(st.integers(0, 2))
    if transposed:
        options["output_padding"] = draw(st.integers(0, max(stride, dilation) - 1))
    else:
        options["padding_mode"] = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    size = draw(st.integers(5, 7 if dims < 3 else 5))
    return Case(dims, transposed, bn_first, groups, c_in, c_out, options, size, draw(st.integers(0, 2**16)))


def expected_action(case: Case, conv: nn.Module) -> Action:
    if not case.bn_first:
        return Action.FOLDED_INTO_PREVIOUS
    if case.transposed or reads_zero_padding(conv):  # type: ignore[arg-type]
        return Action.LOWERED
    return Action.FOLDED_INTO_NEXT


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_any_conv_next_to_a_batchnorm_folds_exactly_or_is_lowered(case: Case) -> None:
    model = case.build()
    inputs = (randn(2, case.c_in, *(case.size,) * case.dims, seed=case.seed),)
    result = check_fold(model, inputs, remaining=0, other_batch=3)
    (entry,) = result.report
    conv_name = "1" if case.bn_first else "0"
    action = expected_action(case, model.get_submodule(conv_name))
    event(f"{action.value}, transposed={case.transposed}, groups={case.groups}")
    assert entry.action is action
    assert entry.target == (None if action is Action.LOWERED else conv_name)
    assert (entry.reason is None) == (action is not Action.LOWERED)
    folded_weight = result.model.get_parameter(f"{conv_name}.weight")
    assert folded_weight.shape == model.get_parameter(f"{conv_name}.weight").shape  # never a broadcast of it
