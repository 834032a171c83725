"""Session fixtures of the deploy tests: the image's two stages rebuilt outside Docker, once per session.

`builder` and `runtime` are fresh virtualenvs, each set up from its own copy of the Docker build context with
the scripts the Dockerfile runs; `default_repository` is what the builder stage builds. As in `docker build`,
the runtime stage is set up while the builder builds (two processes at a time), and the build starts from an
empty trained-weights cache, as in a fresh image: the zoo is really trained, then folded, exported and
verified. About two minutes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.container_build import StageEnvironment, docker_context, run
from tests.deploy.reference import InferenceCase, inference_case


@dataclass(frozen=True)
class RebuiltImage:
    builder: StageEnvironment
    runtime: StageEnvironment
    default_repository: Path


def _builder_with_repository(directory: Path) -> tuple[StageEnvironment, Path]:
    builder = StageEnvironment.create("fold", directory / "venv", docker_context(directory / "context"))
    out, cache = directory / "default-repository", directory / "empty-weights-cache"
    run(["scripts/build-repository.sh", str(out)], builder.context, builder.env(BNFOLD_CACHE_DIR=str(cache)), 900)
    return builder, out


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> RebuiltImage:
    builder_directory, runtime_directory = tmp_path_factory.mktemp("builder"), tmp_path_factory.mktemp("runtime")
    with ThreadPoolExecutor(max_workers=2) as pool:
        building = pool.submit(_builder_with_repository, builder_directory)
        runtime_context = docker_context(runtime_directory / "context")
        runtime = pool.submit(StageEnvironment.create, "serve", runtime_directory / "venv", runtime_context)
        builder, repository = building.result()
        return RebuiltImage(builder, runtime.result(), repository)


@pytest.fixture(scope="session")
def builder(image: RebuiltImage) -> StageEnvironment:
    return image.builder


@pytest.fixture(scope="session")
def runtime(image: RebuiltImage) -> StageEnvironment:
    return image.runtime


@pytest.fixture(scope="session")
def default_repository(image: RebuiltImage) -> Path:
    return image.default_repository


@pytest.fixture(scope="session")
def case(default_repository: Path) -> InferenceCase:
    return inference_case(default_repository)
