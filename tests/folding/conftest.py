"""Every folding test starts from the same global RNG state, so the layers it builds (initialised from the
global RNG) do not depend on which tests ran before it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def seeded_global_rng() -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
