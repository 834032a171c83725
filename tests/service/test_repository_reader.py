"""The service's repository reader applies the contract's entry-name rule to the whole directory name."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from bnfold.service.repository import discover, read_entry
from tests.service.builders import write_entry


def test_discover_skips_names_the_format_forbids(
    tmp_path: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    write_entry(tmp_path, "good", rng)
    for name in ("nl\n", "-dash", "sp ace", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "file.txt").write_text("not an entry")
    with caplog.at_level(logging.WARNING, logger="bnfold.service"):
        assert discover(tmp_path) == ["good"]
    skipped = sorted(record.getMessage().split("'")[1] for record in caplog.records)
    assert skipped == sorted(str(tmp_path / name).replace("\n", "\\n") for name in ("nl\n", "-dash", "sp ace"))
    assert read_entry(tmp_path / "good").manifest.name == "good"
