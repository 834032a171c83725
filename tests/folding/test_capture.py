"""Capture and input handling: one-line FoldingErrors naming cause and fix, other batch sizes, the
caller's model untouched, multi-input/multi-output models."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bnfold.folding import FoldingError, fold
from tests.folding.helpers import FP32_REL, batchnorm_count, check_fold, randn, randomise_batchnorm, relative_error


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return self.bn(self.conv(x))
        return self.conv(x)


def test_untraceable_model_gives_one_line_error_with_cause_and_fix() -> None:
    with pytest.raises(FoldingError) as raised:
        fold(DataDependent().eval(), (randn(1, 3, 5, 5),))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("cannot capture DataDependent as a graph (TraceError: symbolically traced variables")
    assert "wrap the offending function with torch.fx.wrap" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        (lambda x: x, (randn(1),), "fold expects a torch.nn.Module, got function"),
        (nn.Conv2d(3, 4, 3), [], "example_inputs must be a non-empty tuple of tensors, got list"),
        (nn.Conv2d(3, 4, 3), (3,), "example_inputs[0] is a int, not a tensor; pass one tensor per forward argument"),
        (nn.Conv2d(3, 4, 3), {"x": 1}, "example_inputs must be a non-empty tuple of tensors, got dict"),
    ],
    ids=["not_a_module", "empty", "not_a_tensor", "dict"],
)
def test_bad_arguments_give_a_clear_error(model: object, inputs: object, message: str) -> None:
    with pytest.raises(FoldingError) as raised:
        fold(model, inputs)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)


def test_inputs_the_model_rejects_give_a_one_line_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with pytest.raises(FoldingError) as raised:
        fold(model, (randn(1, 5, 8, 8),))
    message = str(raised.value)
    assert message.startswith("the model fails on example_inputs (RuntimeError: ")
    assert message.endswith("pass example inputs of the shape and dtype its forward expects")
    assert "\n" not in message


def test_a_bare_tensor_and_a_list_are_accepted_as_example_inputs() -> None:
    model = randomise_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    for inputs in (randn(2, 3, 6, 6), [randn(2, 3, 6, 6)]):
        assert batchnorm_count(fold(model, inputs).model) == 0


class TwoHeads(nn.Module):
    """Two inputs, a flatten using the dynamic batch size, and a (tensor, dict) output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.linear = nn.Linear(4 * 4 * 4 + 2, 3)
        self.bn_out = nn.BatchNorm1d(3)

    def forward(self, image: Tensor, extra: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        features = torch.relu(self.bn(self.conv(image))).view(image.size(0), -1)
        logits = self.bn_out(self.linear(torch.cat([features, extra], dim=1)))
        return logits, {"features": features}


def test_multi_input_model_folds_and_accepts_other_batch_sizes() -> None:
    model = randomise_batchnorm(TwoHeads()).eval()
    result = fold(model, (randn(2, 3, 6, 6), randn(2, 2, seed=1)))
    assert batchnorm_count(result.model) == 0
    assert type(result.model).__name__ == "TwoHeads"
    for batch in (1, 7):
        image, extra = randn(batch, 3, 6, 6, seed=batch), randn(batch, 2, seed=batch + 1)
        with torch.no_grad():
            (folded, folded_aux), (reference, reference_aux) = result.model(image, extra), model(image, extra)
        assert torch.allclose(folded_aux["features"], reference_aux["features"], rtol=1e-5, atol=1e-6)
        assert (folded - reference).abs().max() <= FP32_REL * reference.abs().max()


def test_model_without_batchnorm_is_returned_equivalent_with_an_empty_report() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    result = check_fold(model, (randn(2, 3, 6, 6),), remaining=0)
    assert len(result.report) == 0 and result.report.max_output_error == 0.0
    assert relative_error(result.model, model, randn(1, 3, 6, 6)) == 0.0


def test_caller_model_keeps_its_modules_and_parameters_objects() -> None:
    model = randomise_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    weight, bn = model[0].weight, model[1]
    result = fold(model, (randn(2, 3, 6, 6),))
    assert model[0].weight is weight and model[1] is bn and isinstance(model[1], nn.BatchNorm2d)
    assert result.model.get_parameter("0.weight") is not weight


class ArgmaxHead(nn.Module):
    """Returns the logits, an integer arg-max and an empty tensor: every output kind is measured."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.bn(self.linear(x))
        return logits, logits.argmax(1), logits[:, :0]


def test_integer_and_empty_outputs_are_measured_end_to_end() -> None:
    model = randomise_batchnorm(ArgmaxHead()).eval()
    result = fold(model, (randn(6, 4),))
    assert result.report.max_output_error is not None and result.report.max_output_error < 1e-5
    assert result.report["bn"].action.value == "folded_into_previous"


def test_folding_a_folded_model_is_a_no_op() -> None:
    """The result is itself foldable input (a GraphModule): nothing left to fold, same function."""
    model = randomise_batchnorm(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    x = randn(2, 3, 6, 6)
    once = fold(model.eval(), (x,))
    twice = check_fold(once.model, (x,), remaining=0)
    assert [e.action.value for e in once.report] == ["lowered_to_scale_shift", "folded_into_previous"]
    assert len(twice.report) == 0
    assert relative_error(twice.model, model, x) <= FP32_REL


class InPlaceInput(nn.Module):
    """Writes to its input: measuring must run both graphs on the same values and leave the caller's alone."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.linear = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x.mul_(2.0)
        return self.linear(self.bn(x))


def test_forward_writing_to_its_input_is_measured_on_the_same_values() -> None:
    model = randomise_batchnorm(InPlaceInput()).eval()
    x = randn(3, 4)
    original = x.clone()
    result = fold(model, (x,))
    assert torch.equal(x, original)
    assert result.report["bn"].max_error is not None and result.report["bn"].max_error < 1e-5
    assert result.report.max_output_error is not None and result.report.max_output_error < 1e-5
