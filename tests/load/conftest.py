"""Fixtures of the load tests: a fresh random generator per module (seed printed for replay)."""

from __future__ import annotations

import secrets

import numpy as np
import pytest


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    seed = secrets.randbits(32)
    print(f"load test seed: {seed}")
    return np.random.default_rng(seed)
