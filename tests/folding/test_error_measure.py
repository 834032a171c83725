"""The fold report's error measure (torch_measure) follows the contract's one non-finite policy."""

from __future__ import annotations

import math

import pytest
import torch

from bnfold.contract.agreement import discrepancy
from bnfold.folding.torch_measure import max_abs_error, output_error

INF, NAN = math.inf, math.nan
EDGES = [
    ([INF, 1.0], [INF, 1.0], 0.0),  # equal infinities agree
    ([NAN, 1.0], [NAN, 1.0], 0.0),  # NaN against NaN agrees
    ([-INF, 1.0], [INF, 1.0], INF),  # opposite infinities
    ([NAN, 1.0], [2.0, 1.0], INF),  # NaN against a number
    ([1.0, 1.0], [INF, 1.0], INF),  # non-finite reference only
    ([3e38, 0.0], [-3e38, 0.0], 6e38),  # overflows float32, not float64
    ([1.5, -2.0], [1.0, -2.25], 0.5),
]


@pytest.mark.parametrize(("candidate", "reference", "expected"), EDGES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_abs_error_is_the_contract_rule(
    candidate: list[float], reference: list[float], expected: float, dtype: torch.dtype
) -> None:
    a, b = torch.tensor(candidate, dtype=dtype), torch.tensor(reference, dtype=dtype)
    found = max_abs_error(a, b)
    assert found == discrepancy(a.double().numpy(), b.double().numpy()).max_abs
    assert found == pytest.approx(expected, rel=1e-6)


def test_half_precision_and_integers_and_missing_values() -> None:
    a = torch.tensor([[INF, 0.5, NAN]], dtype=torch.float16)
    assert max_abs_error(a, a.clone()) == 0.0
    assert max_abs_error(a, torch.tensor([[INF, 0.25, NAN]], dtype=torch.float16)) == 0.25
    assert max_abs_error(torch.tensor([3, 5]), torch.tensor([3, 9])) == 4.0
    assert max_abs_error(torch.zeros(0, 4), torch.zeros(0, 4)) == 0.0
    assert max_abs_error(torch.zeros(2), torch.zeros(3)) is None and max_abs_error(None, torch.zeros(2)) is None
    pair = (torch.tensor([1.0, NAN]), {"b": torch.tensor([2.0])})
    assert output_error(pair, (torch.tensor([1.0, NAN]), {"b": torch.tensor([2.5])})) == 0.5
    assert output_error(pair, (torch.tensor([1.0, 0.0]), {"b": torch.tensor([2.0])})) == INF
