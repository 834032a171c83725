"""Fixtures of the UI tests: the zoo repository with one tampered and one defective entry, served by a real
uvicorn server, and a real headless Chromium (bench/browser.py)."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from selenium import webdriver

from bench.browser import headless_chromium
from bnfold.service.settings import Settings
from tests.service.builders import Weights, build_graph, write_entry
from tests.service.server import RunningServer, running_server

TAMPERED = "digits_mobilenet"  # its folded.onnx loses its last bytes: sha256 differs -> unavailable
DEFECTIVE = "clipped"  # folded clips its input at ±2: agrees on the calibration batch, mismatches beyond it


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    seed = secrets.randbits(32)
    print(f"ui test seed: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def ui_repository(zoo_repository: Path, tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    """The zoo models (one of them tampered) plus a defective entry that fails over while serving."""
    root = Path(shutil.copytree(zoo_repository, tmp_path_factory.mktemp("ui") / "repository"))
    folded = root / TAMPERED / "folded.onnx"
    folded.write_bytes(folded.read_bytes()[:-10])
    weights = Weights.random(rng)
    write_entry(root, DEFECTIVE, rng, weights=weights, folded_model=build_graph(weights, folded=True, clip_input=2.0))
    return root


@pytest.fixture(scope="module")
def ui_server(ui_repository: Path) -> Iterator[RunningServer]:
    """The UI repository served with every default request checked."""
    with running_server(Settings(repository=ui_repository, equivalence_policy="always")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium(1400, 1000) as driver:
        yield driver
