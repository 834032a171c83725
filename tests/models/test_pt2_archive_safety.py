"""A crafted .pt2 must never get a chance to run code: fold-and-export refuses it before torch.export.load
(which unpickles payloads and sympify-evals shape expressions).

Each malicious archive is first shown to be live (torch.export.load on it creates the marker file), then
fold-and-export must refuse it with a one-line error while the marker stays absent.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from bnfold.models.pt2.allowlist import checked_archive_bytes
from tests.models import tiny_nets
from tests.models.cli_helpers import bnfold, repository_contents

Entries = dict[str, bytes]


class _Marker:
    """Unpickling this creates a file: proof that arbitrary objects were (not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (Path(self.path),))


def _plain_archive(path: Path) -> None:
    model = tiny_nets.randomise_batchnorm(tiny_nets.ConvBnHead(), seed=5).eval()
    dynamic = ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, 8, 8),), dynamic_shapes=dynamic), path)


def _rewrite(source: Path, target: Path, edit: Callable[[Entries], None]) -> None:
    """Copy the archive's entries (in order), letting `edit` change, add or drop some."""
    with zipfile.ZipFile(source) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    edit(entries)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def _name(entries: Entries, suffix: str) -> str:
    return next(name for name in entries if name.endswith(suffix))


def _pickled_weight(marker: Path) -> Callable[[Entries], None]:
    """Flag the first weight use_pickle and replace its payload by a malicious pickle."""

    def edit(entries: Entries) -> None:
        config_name = _name(entries, "data/weights/model_weights_config.json")
        config = json.loads(entries[config_name])
        meta = next(iter(config["config"].values()))
        meta["use_pickle"] = True
        entries[config_name] = json.dumps(config).encode()
        entries[_name(entries, "data/weights/" + meta["path_name"])] = pickle.dumps(_Marker(str(marker)))

    return edit


def _opaque_constant(marker: Path) -> Callable[[Entries], None]:
    """Add an opaque-object constant, which torch loads with pickle.loads."""

    def edit(entries: Entries) -> None:
        config_name = _name(entries, "data/constants/model_constants_config.json")
        config = json.loads(entries[config_name])
        config["config"]["evil"] = {
            "path_name": "opaque_obj_0",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }
        entries[config_name] = json.dumps(config).encode()
        root = config_name.split("/", 1)[0]
        entries[f"{root}/data/constants/opaque_obj_0"] = pickle.dumps(_Marker(str(marker)))

    return edit


def _pickled_sample_inputs(marker: Path) -> Callable[[Entries], None]:
    """Sample inputs that fail the weights-only load: torch falls back to weights_only=False."""

    def edit(entries: Entries) -> None:
        entries[_name(entries, "data/sample_inputs/model.pt")] = pickle.dumps(_Marker(str(marker)))

    return edit


SYMBOL = "Symbol('s77', positive=True, integer=True)"  # how torch.export writes the dynamic batch size


def _program(entries: Entries) -> tuple[str, str]:
    name = _name(entries, "models/model.json")
    text = entries[name].decode()
    assert SYMBOL in text
    return name, text


def _eval_in_shape_expression(marker: Path) -> Callable[[Entries], None]:
    """A shape expression with a call in it: torch hands it to sympy.sympify, which evals it."""

    def edit(entries: Entries) -> None:
        name, text = _program(entries)
        entries[name] = text.replace(SYMBOL, f"(open('{marker}', 'w').close() or {SYMBOL})").encode()

    return edit


@pytest.mark.parametrize(
    ("tamper", "fragment"),
    [
        (_pickled_weight, "'conv.weight' is stored pickled (use_pickle), which could run code when loaded"),
        (_opaque_constant, "contains 'data/constants/opaque_obj_0', which a plain torch.export archive does not have"),
        (_pickled_sample_inputs, "its sample inputs need a full unpickler (UnpicklingError), which could run code"),
        (_eval_in_shape_expression, "is not a plain sympy expression (sympify would eval it)"),
    ],
    ids=["pickled_weight", "opaque_constant", "pickled_sample_inputs", "shape_expression"],
)
def test_malicious_archive_is_refused_before_anything_is_unpickled(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tamper: Callable[[Path], Callable[[Entries], None]],
    fragment: str,
) -> None:
    plain, evil, marker = tmp_path / "plain.pt2", tmp_path / "evil.pt2", tmp_path / "payload_ran"
    _plain_archive(plain)
    _rewrite(plain, evil, tamper(marker))
    with contextlib.suppress(Exception):  # whatever torch makes of the rest, the payload has run by then
        torch.export.load(evil)
    assert marker.exists(), "the crafted archive should be live for torch.export.load"
    marker.unlink()

    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", evil, "--out", repository)
    assert ran.code == 1
    assert ran.err.count("\n") == 1 and "Traceback" not in ran.err
    assert ran.err.startswith(f"bnfold fold-and-export: {evil}")
    assert fragment in ran.err and "re-export a plain nn.Module with torch.export.save" in ran.err
    assert not marker.exists()
    assert repository_contents(repository) == []


def _add(relative: str) -> Callable[[Entries], None]:
    def edit(entries: Entries) -> None:
        root = next(iter(entries)).split("/", 1)[0]
        entries[f"{root}/{relative}"] = b"\x00"

    return edit


def _drop(suffix: str) -> Callable[[Entries], None]:
    def edit(entries: Entries) -> None:
        del entries[_name(entries, suffix)]

    return edit


def _case_twin(entries: Entries) -> None:
    name = _name(entries, "data/weights/model_weights_config.json")
    entries[name.replace("model_weights", "Model_Weights")] = entries[name]


def _outside_root(entries: Entries) -> None:
    entries["version"] = b"0.1"


def _replace_in_program(old: str, new: str) -> Callable[[Entries], None]:
    def edit(entries: Entries) -> None:
        name, text = _program(entries)
        assert old in text
        entries[name] = text.replace(old, new).encode()

    return edit


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (_add("data/aotinductor/model/model.so"), "contains 'data/aotinductor/model/model.so'"),
        (_add("data/weights/model.pt"), "contains 'data/weights/model.pt'"),
        (_add("data/constants/custom_obj_0"), "contains 'data/constants/custom_obj_0'"),
        (_drop("data/constants/model_constants_config.json"), "has no data/constants/model_constants_config.json"),
        (_case_twin, "entries whose names differ only in case"),
        (_outside_root, "has an entry 'version' outside its top-level directory"),
        (
            _replace_in_program('"torch.ops.aten.relu.default"', '"torch.os.system"'),
            "a graph node calls 'torch.os.system', which is not an ATen/prims operator or allowed helper",
        ),
        (
            _replace_in_program('"parameter_name": "conv.weight"', '"parameter_name": "conv.w\\") or exec(\\"1"'),
            "is not a dotted path of letters, digits, '_' and '-'",
        ),
    ],
    ids=[
        "aoti",
        "legacy_weights",
        "custom_object",
        "legacy_constants",
        "case_twin",
        "legacy_format",
        "python_target",
        "quoted_name",
    ],
)
def test_archive_parts_outside_the_allow_list_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, edit: Callable[[Entries], None], fragment: str
) -> None:
    plain, odd = tmp_path / "plain.pt2", tmp_path / "odd.pt2"
    _plain_archive(plain)
    _rewrite(plain, odd, edit)
    repository = tmp_path / "repo"
    ran = bnfold(capsys, "fold-and-export", "--model", odd, "--out", repository)
    assert ran.code == 1 and ran.err.count("\n") == 1, ran.err
    assert fragment in ran.err
    assert repository_contents(repository) == []


def test_an_untampered_rewrite_still_loads(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The allow-list accepts what torch.export.save writes (a copy through the same rewriter)."""
    plain, copy = tmp_path / "plain.pt2", tmp_path / "copy.pt2"
    _plain_archive(plain)
    _rewrite(plain, copy, lambda entries: None)
    ran = bnfold(capsys, "fold-and-export", "--model", copy, "--out", tmp_path / "repo", "--json")
    assert ran.code == 0, ran.err
    assert ran.json()["batchnorm_nodes"] == {"unfolded": 1, "folded": 0}


class _Reshapes(nn.Module):
    """Shape arithmetic on the dynamic batch: model.json holds Mul(Integer(2), Symbol(…)) expressions and
    an _operator.mul node."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(-1, 4)
        return torch.cat([y[: y.shape[0] // 2], y[: y.shape[0] // 2]]).flatten()


def test_shape_arithmetic_of_a_plain_export_is_allowed(tmp_path: Path) -> None:
    archive = tmp_path / "reshapes.pt2"
    program = torch.export.export(_Reshapes(), (torch.randn(3, 8),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(program, archive)
    text = zipfile.ZipFile(archive).read("reshapes/models/model.json").decode()
    assert "Mul(Integer(2), Symbol(" in text and '"_operator.mul"' in text
    assert checked_archive_bytes(archive) == archive.read_bytes()
