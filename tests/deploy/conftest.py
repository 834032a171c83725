"""Session fixtures of the deploy tests: the image's two stages rebuilt outside Docker, once per session.

`builder` and `runtime` are fresh virtualenvs set up from a copy of the Docker build context with the
scripts the Dockerfile runs; `default_repository` is what the builder stage builds. It uses the machine's
trained-weights cache ($BNFOLD_CACHE_DIR or ~/.cache/bnfold, as `make serve` does): with the cache warm the
zoo is not retrained (training alone takes minutes on a busy 2-core machine), while folding, export and
verification always run; with it cold, the build trains as `docker build` does. Slow (one to two minutes)
and shared by the other slow deploy tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy.container_build import StageEnvironment, docker_context, run
from tests.deploy.reference import InferenceCase, inference_case


@pytest.fixture(scope="session")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return docker_context(tmp_path_factory.mktemp("docker-context"))


@pytest.fixture(scope="session")
def builder(build_context: Path, tmp_path_factory: pytest.TempPathFactory) -> StageEnvironment:
    return StageEnvironment.create("fold", tmp_path_factory.mktemp("builder") / "venv", build_context)


@pytest.fixture(scope="session")
def runtime(build_context: Path, tmp_path_factory: pytest.TempPathFactory) -> StageEnvironment:
    return StageEnvironment.create("serve", tmp_path_factory.mktemp("runtime") / "venv", build_context)


@pytest.fixture(scope="session")
def default_repository(builder: StageEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("image") / "default-repository"
    cache = {"BNFOLD_CACHE_DIR": os.environ["BNFOLD_CACHE_DIR"]} if "BNFOLD_CACHE_DIR" in os.environ else {}
    run(["scripts/build-repository.sh", str(out)], builder.context, builder.env(**cache), 900)
    return out


@pytest.fixture(scope="session")
def case(default_repository: Path) -> InferenceCase:
    return inference_case(default_repository)
