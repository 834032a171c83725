"""Run `bnfold` commands in-process and look at what they left in a repository."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bnfold.cli.dispatch import main


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def bnfold(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Ran:
    """`bnfold ARGV…` in this process (argparse usage errors exit via SystemExit, caught here)."""
    capsys.readouterr()
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as stop:
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


def repository_contents(repository: Path) -> list[str]:
    """Every name under REPO_DIR, hidden temporaries included (empty when nothing was left behind)."""
    if not repository.exists():
        return []
    return sorted(str(path.relative_to(repository)) for path in repository.rglob("*"))
