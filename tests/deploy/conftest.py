"""Session fixtures of the deploy tests: the image's two stages rebuilt outside Docker, once per session.

`builder` and `runtime` are fresh virtualenvs, each set up from its own copy of the Docker build context with
the scripts the Dockerfile runs; `default_repository` is what the builder stage builds. As in `docker build`,
the runtime stage is set up while the builder builds (two processes at a time). The build uses the machine's
trained-weights cache ($BNFOLD_CACHE_DIR or ~/.cache/bnfold, as `make serve` does): with the cache warm the zoo
is not retrained (training alone takes minutes on a busy 2-core machine), while folding, export and
verification always run; with it cold, the build trains as `docker build` does. One to three minutes.
"""

from __future__ import annotations

import os
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
    out = directory / "default-repository"
    cache = {"BNFOLD_CACHE_DIR": os.environ["BNFOLD_CACHE_DIR"]} if "BNFOLD_CACHE_DIR" in os.environ else {}
    run(["scripts/build-repository.sh", str(out)], builder.context, builder.env(**cache), 900)
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
