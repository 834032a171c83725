"""A ConvTranspose that receives a BN becomes its SeparateBias subclass: same function in eager mode, one
biased ConvTranspose node (no Add) when exported, and onnxruntime agrees; BN statistics are random."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bnfold.folding import export_onnx, fold
from bnfold.folding.torch_conv_transpose import (
    ConvTranspose1dSeparateBias,
    ConvTranspose2dSeparateBias,
    ConvTranspose3dSeparateBias,
)
from tests.nets.reference_nets import randomize_batchnorm

CASES = {
    # name: (ConvTranspose, BatchNorm, its SeparateBias class, input shape)
    "1d groups 4 stride 2": (
        lambda: nn.ConvTranspose1d(8, 12, 3, stride=2, padding=1, output_padding=1, groups=4, bias=False),
        nn.BatchNorm1d(12),
        ConvTranspose1dSeparateBias,
        (3, 8, 7),
    ),
    "2d groups 2 dilation 2 with bias": (
        lambda: nn.ConvTranspose2d(6, 4, 3, padding=2, dilation=2, groups=2),
        nn.BatchNorm2d(4),
        ConvTranspose2dSeparateBias,
        (2, 6, 5, 5),
    ),
    "2d depthwise stride 2": (
        lambda: nn.ConvTranspose2d(8, 8, 2, stride=2, groups=8, bias=False),
        nn.BatchNorm2d(8),
        ConvTranspose2dSeparateBias,
        (2, 8, 4, 4),
    ),
    "3d groups 1": (
        lambda: nn.ConvTranspose3d(4, 6, 2, stride=(1, 2, 2), bias=False),
        nn.BatchNorm3d(6),
        ConvTranspose3dSeparateBias,
        (2, 4, 3, 4, 4),
    ),
}


def unfolded_model(name: str) -> nn.Module:
    make_conv, batchnorm, _, _ = CASES[name]
    torch.manual_seed(sum(map(ord, name)))
    model = nn.Sequential(make_conv(), batchnorm, nn.ReLU())
    return randomize_batchnorm(model.eval(), seed=len(name))


@pytest.mark.parametrize("name", list(CASES))
def test_folded_conv_transpose_adds_its_bias_separately_and_exports_one_node(name: str) -> None:
    _, _, separate_class, shape = CASES[name]
    model = unfolded_model(name)
    x = torch.randn(*shape)
    result = fold(model, (x,))
    folded_conv = result.model.get_submodule("0")
    assert type(folded_conv) is separate_class
    assert folded_conv.bias is not None and result.report.summary().startswith("1/1 BatchNorm folded")
    assert type(model[0]) is not separate_class  # the caller's model is untouched
    for batch in (x, torch.randn(5, *shape[1:])):
        with torch.no_grad():
            expected = model(batch)
            got = result.model(batch)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))

    proto = export_onnx(result.model, (x,), input_names=["input"], output_names=["output"])
    nodes = [(node.op_type, len(node.input)) for node in proto.graph.node]
    assert ("ConvTranspose", 3) in nodes, nodes  # the bias travels inside the ConvTranspose node
    assert not any(op in ("Add", "BatchNormalization") for op, _ in nodes), nodes
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, rtol=1e-5, atol=1e-5)


def test_separate_bias_forward_equals_the_parent_forward() -> None:
    """Unbatched input and the output_size argument take the same path as nn.ConvTranspose2d's forward."""
    torch.manual_seed(3)
    plain = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2).eval()
    separate = ConvTranspose2dSeparateBias(4, 6, 3, stride=2, padding=1, groups=2).eval()
    separate.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for x, size in (
            (torch.randn(2, 4, 5, 5), None),
            (torch.randn(4, 5, 5), None),
            (torch.randn(2, 4, 5, 5), [10, 10]),
        ):
            expected = plain(x, size)
            got = separate(x, size)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_a_conv_transpose_without_a_batchnorm_keeps_its_class() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.ConvTranspose2d(3, 3, 2), nn.ReLU(), nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    model = randomize_batchnorm(model.eval(), seed=2)
    result = fold(model, (torch.randn(2, 3, 4, 4),))
    assert type(result.model.get_submodule("0")) is nn.ConvTranspose2d
    assert type(result.model.get_submodule("2")) is nn.Conv2d


def folded_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A Conv→BN→ReLU→grouped ConvTranspose→BN model and its folded version."""
    torch.manual_seed(11)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2, bias=False),
        nn.BatchNorm2d(4),
    )
    model = randomize_batchnorm(model.eval(), seed=4)
    x = torch.randn(2, 3, 6, 6)
    return model, fold(model, (x,)).model, x


def test_a_folded_model_folds_again_into_its_separate_bias_conv_transpose() -> None:
    """The SeparateBias class is one layer to the capture and has the ConvTranspose rules."""
    _, folded, x = folded_pair()
    extra = randomize_batchnorm(nn.BatchNorm2d(4).eval(), seed=9)
    chained = nn.Sequential(folded, extra).eval()
    result = fold(chained, (x,))
    assert result.report.summary().startswith("1/1 BatchNorm folded")
    assert type(result.model.get_submodule("0.3")) is ConvTranspose2dSeparateBias
    with torch.no_grad():
        expected = chained(x)
        torch.testing.assert_close(result.model(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_a_folded_model_survives_torch_save_and_torch_jit_script(tmp_path: Path) -> None:
    model, folded, x = folded_pair()
    torch.save(folded, tmp_path / "folded.pt")
    loaded = torch.load(tmp_path / "folded.pt", weights_only=False)
    scripted = torch.jit.script(folded)
    with torch.no_grad():
        expected = model(x)
        for candidate in (folded, loaded, scripted):
            torch.testing.assert_close(candidate(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert type(loaded.get_submodule("3")) is ConvTranspose2dSeparateBias


def test_separate_bias_keeps_the_autocast_dtype() -> None:
    torch.manual_seed(8)
    plain = nn.ConvTranspose2d(4, 6, 3, stride=2).eval()
    separate = ConvTranspose2dSeparateBias(4, 6, 3, stride=2).eval()
    separate.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 5, 5)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            expected, got = plain(x), separate(x)
        assert got.dtype == expected.dtype == dtype
        torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2 * float(expected.abs().max()))


def test_a_folded_model_with_a_lowered_batchnorm_scripts() -> None:
    """BN on the input has no producer and feeds a ReLU: it is lowered to ChannelScaleShift."""
    torch.manual_seed(12)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3))
    model = randomize_batchnorm(model.eval(), seed=6)
    x = torch.randn(2, 3, 6, 6)
    result = fold(model, (x,))
    assert "1 lowered" in result.report.summary()
    scripted = torch.jit.script(result.model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
