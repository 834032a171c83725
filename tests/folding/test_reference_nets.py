"""The locally built reference architectures match torchvision's and the BN helpers do what they say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.nets.reference_nets import (
    REFERENCE_NETS,
    batchnorm_modules,
    delete_batchnorm,
    densenet_small,
    mobilenet_v2,
    randomize_batchnorm,
    resnet18,
)

# BatchNorm counts derived from the architecture definitions (see the module docstring) and parameter
# counts at 1000 classes as published for torchvision.models (resnet18/resnet50/mobilenet_v2).
EXPECTED = {
    "resnet18": (20, 11_689_512),
    "resnet50": (53, 25_557_032),
    "mobilenet_v2": (52, 3_504_872),
    "densenet_small": (28, None),
}

# A few state-dict keys of the torchvision models, so weights and fold reports use the familiar names.
TORCHVISION_KEYS = {
    "resnet18": ["bn1.running_var", "layer2.0.downsample.1.running_mean", "layer4.1.bn2.weight", "fc.bias"],
    "resnet50": ["layer1.0.downsample.0.weight", "layer3.5.bn3.running_var", "layer4.2.conv3.weight"],
    "mobilenet_v2": ["features.0.1.weight", "features.1.conv.2.running_mean", "features.2.conv.1.0.weight"],
    "densenet_small": [
        "features.norm0.weight",
        "features.denseblock1.denselayer1.norm1.running_var",
        "features.transition2.conv.weight",
        "features.norm5.bias",
    ],
}


@pytest.fixture(scope="module", params=sorted(REFERENCE_NETS))
def built(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    name: str = request.param
    return name, REFERENCE_NETS[name]()


def test_batchnorm_and_parameter_counts(built: tuple[str, nn.Module]) -> None:
    name, model = built
    bn_count, parameter_count = EXPECTED[name]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn_count
    assert len(batchnorm_modules(model)) == bn_count
    if parameter_count is not None:
        assert sum(p.numel() for p in model.parameters()) == parameter_count


def test_module_names_follow_torchvision(built: tuple[str, nn.Module]) -> None:
    name, model = built
    keys = set(model.state_dict())
    missing = [key for key in TORCHVISION_KEYS[name] if key not in keys]
    assert missing == []


def test_runs_at_small_input_in_eval_mode(built: tuple[str, nn.Module]) -> None:
    _, model = built
    assert not model.training
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert logits.shape == (2, 1000)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0


def test_num_classes_sets_the_head() -> None:
    assert mobilenet_v2(num_classes=7).classifier[1].out_features == 7
    assert densenet_small(num_classes=3)(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_init_is_deterministic_per_seed_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, again, other = densenet_small(seed=5), densenet_small(seed=5), densenet_small(seed=6)
    assert torch.equal(torch.rand(1), expected_next)
    weight = "features.conv0.weight"
    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])


def test_randomize_batchnorm_gives_nontrivial_statistics_in_range() -> None:
    model = randomize_batchnorm(resnet18(), seed=3).requires_grad_(False)
    for _, bn in batchnorm_modules(model):
        assert bn.weight is not None and bn.bias is not None
        assert bn.running_mean is not None and bn.running_var is not None
        assert float(bn.weight.min()) >= 0.5 and float(bn.weight.max()) <= 1.5
        assert float(bn.running_var.min()) >= 0.5 and float(bn.running_var.max()) <= 2.0
        assert float(bn.bias.abs().max()) > 0 and float(bn.running_mean.abs().max()) > 0
        assert float(bn.weight.std()) > 0.1
    again = randomize_batchnorm(resnet18(), seed=3)
    assert torch.equal(model.state_dict()["layer3.1.bn2.running_var"], again.state_dict()["layer3.1.bn2.running_var"])


@torch.no_grad()
def _make_batchnorm_exact_identity(model: nn.Module) -> None:
    """γ = 1, β = 0, μ = 0, σ² = 1, ε = 0: BN computes (x − 0)/√1 · 1 + 0 = x exactly."""
    for _, bn in batchnorm_modules(model):
        assert bn.weight is not None and bn.bias is not None
        assert bn.running_mean is not None and bn.running_var is not None
        bn.eps = 0.0
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet_small"])
def test_delete_batchnorm_equals_identity_batchnorm_and_leaves_input_alone(name: str) -> None:
    original = randomize_batchnorm(REFERENCE_NETS[name](), seed=11)
    before = {key: value.clone() for key, value in original.state_dict().items()}
    stripped = delete_batchnorm(original)
    assert batchnorm_modules(stripped) == []
    assert len(batchnorm_modules(original)) == EXPECTED[name][0]
    assert all(torch.equal(before[key], value) for key, value in original.state_dict().items())
    _make_batchnorm_exact_identity(original)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.allclose(stripped(x), original(x), rtol=1e-5, atol=1e-6)
