"""The Dockerfile: hadolint finds nothing, and it has the shape a deployment needs (stages, layers, user, checks)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.deploy.container_build import DOCKERFILE, REPO_ROOT
from tests.deploy.dockerfile_parse import Stage, parse_stages

HADOLINT = REPO_ROOT / ".venv" / "bin" / "hadolint"


def hadolint(path: Path) -> list[dict[str, object]]:
    """hadolint's findings at every level down to 'info', as JSON."""
    command = [str(HADOLINT), "--failure-threshold", "info", "--format", "json", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    findings: list[dict[str, object]] = json.loads(result.stdout)
    return findings


@pytest.fixture(scope="module")
def stages() -> dict[str | None, Stage]:
    return {stage.name: stage for stage in parse_stages(DOCKERFILE)}


def test_hadolint_finds_nothing_at_any_level() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the guard: the same hadolint call reports the faults of a careless Dockerfile."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nUSER root\nCMD python app.py\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3013", "DL3002", "DL3025"} <= codes


def test_two_stages_builder_then_runtime_last(stages: dict[str | None, Stage]) -> None:
    assert list(stages) == ["builder", "runtime"]


def test_builder_installs_cpu_torch_and_builds_the_verified_repository(stages: dict[str | None, Stage]) -> None:
    builder = stages["builder"]
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in builder.arguments("ARG")
    assert builder.index("RUN", "scripts/install-deps.sh fold") < builder.index("RUN", "scripts/build-repository.sh")


def test_runtime_has_serving_deps_only_and_the_built_repository(stages: dict[str | None, Stage]) -> None:
    runtime = stages["runtime"]
    runs = " ".join(runtime.arguments("RUN"))
    assert "scripts/install-deps.sh serve" in runs
    assert "install-deps.sh fold" not in runs and "torch" not in runs.lower()
    assert any(a.startswith("--from=builder") and a.endswith(" /models") for a in runtime.arguments("COPY"))


@pytest.mark.parametrize("stage_name", ["builder", "runtime"])
def test_dependencies_are_installed_before_the_source_is_copied(
    stages: dict[str | None, Stage], stage_name: str
) -> None:
    stage = stages[stage_name]
    install = stage.index("RUN", "scripts/install-deps.sh")
    copies_before = [arguments for name, arguments in stage.instructions[:install] if name == "COPY"]
    assert copies_before == ["pyproject.toml ./", "scripts/install-deps.sh ./scripts/"]
    for package in ("bnfold/", "contract/", "folding/", "models/", "service/", "cli/"):
        assert stage.index("COPY", package) > install


@pytest.mark.parametrize("stage_name", ["builder", "runtime"])
def test_runs_as_a_numeric_non_root_user(stages: dict[str | None, Stage], stage_name: str) -> None:
    assert stages[stage_name].arguments("USER") == ["10001:10001"]


def test_runtime_command_healthcheck_and_bnfold_environment(stages: dict[str | None, Stage]) -> None:
    runtime = stages["runtime"]
    assert runtime.arguments("CMD") == ['["/opt/bnfold/scripts/serve.sh"]']
    (healthcheck,) = runtime.arguments("HEALTHCHECK")
    assert healthcheck.endswith('CMD ["python", "/opt/bnfold/scripts/healthcheck.py"]')
    environment = " ".join(runtime.arguments("ENV"))
    for setting in ("BNFOLD_REPOSITORY=/models", "BNFOLD_HOST=0.0.0.0", "BNFOLD_PORT=8000"):
        assert setting in environment
    assert runtime.arguments("EXPOSE") == ["8000"]


def test_serve_script_runs_bnfold_serve() -> None:
    assert 'exec bnfold serve "$@"' in (REPO_ROOT / "scripts" / "serve.sh").read_text()


def test_dockerignore_admits_only_what_the_image_copies() -> None:
    lines = [line for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "**"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted == {
        "pyproject.toml",
        "README.md",
        "bnfold",
        "contract",
        "folding",
        "models",
        "service",
        "cli",
        "scripts",
    }
