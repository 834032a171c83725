"""Verification rule 2: unfolded.onnx must hold one BatchNormalization node per BN of the fold
report. An exporter that fused *some* BNs (not all) used to pass, since only "none left" was checked."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from torch import Tensor, nn

from bnfold.folding.onnx_fold import fold_onnx
from bnfold.models.errors import VerificationError
from bnfold.models.export import publish
from bnfold.models.export.checks import count_batchnorm
from bnfold.models.export.manifest import Candidate
from bnfold.models.export.spec import LoadedModel
from bnfold.models.export.torch_candidate import candidate_from_model
from bnfold.models.progress import Progress
from tests.models.tiny_nets import randomise_batchnorm


class ConvBnReluBn(nn.Module):
    """Conv → BN (foldable) → ReLU → BN (no neighbour: lowered by the PyTorch fold, kept by fold_onnx when
    lowering is off) → mean over space."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(torch.relu(self.bn1(self.conv(x)))).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def exported() -> Candidate:
    """The real fold-and-export candidate (fold, dynamo export of both variants) of ConvBnReluBn."""
    model = randomise_batchnorm(ConvBnReluBn(), seed=11).eval()
    calibration = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    loaded = LoadedModel(module=model, calibration=calibration, source="test", default_name="two_bn")
    return candidate_from_model(loaded, Progress(quiet=True))


@pytest.fixture
def candidate(exported: Candidate) -> Candidate:
    return copy.deepcopy(exported)


def test_an_honest_export_passes(candidate: Candidate) -> None:
    verified = publish.verify_candidate(candidate)
    assert verified.batchnorm_nodes == {"unfolded": 2, "folded": 0}
    assert len(candidate.fold_report["entries"]) == 2


def test_an_exporter_that_fused_one_of_two_batchnorms_is_caught(candidate: Candidate) -> None:
    """unfolded.onnx replaced by an equivalent graph with bn1 fused into the conv and bn2 kept: the outputs
    still match, so only the count can tell."""
    partly_fused = fold_onnx(onnx.load_from_string(candidate.unfolded), lower_unfoldable=False)
    assert count_batchnorm(partly_fused.model) == 1
    candidate.unfolded = partly_fused.model.SerializeToString()
    with pytest.raises(VerificationError) as raised:
        publish.verify_candidate(candidate)
    assert str(raised.value) == (
        "unfolded.onnx has 1 BatchNormalization node(s) but the fold report lists 2 BatchNorms: the exporter "
        "folded some of them; export with the dynamo exporter and optimize=False"
    )


def test_an_unfolded_graph_with_more_batchnorms_than_the_report_is_caught(candidate: Candidate) -> None:
    """The report of a one-BN model paired with the two-BN graph: the report does not describe it."""
    candidate.fold_report["entries"] = candidate.fold_report["entries"][:1]
    with pytest.raises(VerificationError, match=r"^unfolded\.onnx has 2 BatchNormalization node\(s\) but the fold "
                       r"report lists only 1 BatchNorms: the report does not describe this graph"):  # fmt: skip
        publish.verify_candidate(candidate)
