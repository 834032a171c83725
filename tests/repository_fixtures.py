"""Shared fixtures: the default repository (every zoo model), built once per test session.

`zoo_repository` is built by `models.zoo.default_repository.build_default`, the code path of
`bnfold build-default --out DIR` (train → fold → export both → verify → write atomically), with a fresh
temporary weights cache, so the session trains the zoo once. Treat it as read-only: a test that damages or
edits entries takes `zoo_repository_copy` (a private copy in the test's tmp_path) instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bnfold.models.zoo.default_repository import DefaultEntry, build_default


@pytest.fixture(scope="session")
def zoo_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh, empty BNFOLD_CACHE_DIR for this session's zoo training."""
    return tmp_path_factory.mktemp("bnfold_cache")


@pytest.fixture(scope="session")
def zoo_build(tmp_path_factory: pytest.TempPathFactory, zoo_cache_dir: Path) -> tuple[Path, list[DefaultEntry]]:
    """(repository path, one DefaultEntry per zoo model) of the session's default repository."""
    repository = tmp_path_factory.mktemp("zoo_repository") / "repository"
    return repository, build_default(repository, cache_dir=zoo_cache_dir)


@pytest.fixture(scope="session")
def zoo_repository(zoo_build: tuple[Path, list[DefaultEntry]]) -> Path:
    """Path of a repository holding every zoo model (read-only: use zoo_repository_copy to modify)."""
    return zoo_build[0]


@pytest.fixture
def zoo_repository_copy(zoo_repository: Path, tmp_path: Path) -> Path:
    """A private copy of the zoo repository that a test may damage or edit."""
    return Path(shutil.copytree(zoo_repository, tmp_path / "repository"))
