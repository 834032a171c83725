"""Property: for random conv geometries, fold_onnx is exact, and folds forward exactly when it may."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bnfold.folding.report import Action
from tests.onnx.graphs import GraphBuilder, fold_and_check, ops

geometry = st.fixed_dictionaries(
    {
        "groups": st.sampled_from([1, 2, 3]),
        "in_per_group": st.integers(1, 3),
        "out_per_group": st.integers(1, 3),
        "kernel": st.integers(1, 3),
        "stride": st.integers(1, 2),
        "dilation": st.integers(1, 2),
        "pad": st.integers(0, 1),
        "bias": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def _conv_attributes(g: dict[str, int]) -> dict[str, object]:
    side = g["kernel"]
    return {
        "group": g["groups"],
        "kernel_shape": [side, side],
        "strides": [g["stride"]] * 2,
        "dilations": [g["dilation"]] * 2,
        "pads": [g["pad"]] * 4,
    }


@settings(max_examples=30, deadline=None)
@given(g=geometry, transposed=st.booleans())
def test_layer_then_bn_always_folds_into_the_layer(g: dict[str, int], transposed: bool) -> None:
    c_in, c_out = g["groups"] * g["in_per_group"], g["groups"] * g["out_per_group"]
    b = GraphBuilder(seed=g["seed"])
    shape = (c_in, g["out_per_group"]) if transposed else (c_out, g["in_per_group"])
    inputs = [b.input("x", ["N", c_in, 6, 6]), b.weight("w", (*shape, g["kernel"], g["kernel"]))]
    if g["bias"]:
        inputs.append(b.weight("b", (c_out,)))
    op = "ConvTranspose" if transposed else "Conv"
    b.node(op, inputs, "z", **_conv_attributes(g))
    b.batchnorm("z", c_out, "y")
    b.output("y", 4)
    result = fold_and_check(b.model(), b.feeds(batch=2), batchnorms_left=0)
    assert ops(result.model) == [op]
    assert result.report["bn_y"].action is Action.FOLDED_INTO_PREVIOUS


@settings(max_examples=30, deadline=None)
@given(g=geometry)
def test_bn_then_conv_folds_forward_exactly_when_unpadded(g: dict[str, int]) -> None:
    c_in, c_out = g["groups"] * g["in_per_group"], g["groups"] * g["out_per_group"]
    b = GraphBuilder(seed=g["seed"])
    b.batchnorm(b.input("x", ["N", c_in, 6, 6]), c_in, "h")
    inputs = ["h", b.weight("w", (c_out, g["in_per_group"], g["kernel"], g["kernel"]))]
    if g["bias"]:
        inputs.append(b.weight("b", (c_out,)))
    b.node("Conv", inputs, "y", **_conv_attributes(g))
    b.output("y", 4)
    result = fold_and_check(b.model(), b.feeds(batch=2), batchnorms_left=0)
    expected = Action.LOWERED if g["pad"] else Action.FOLDED_INTO_NEXT
    assert result.report["bn_h"].action is expected
    assert ops(result.model) == (["Mul", "Add", "Conv"] if g["pad"] else ["Conv"])
