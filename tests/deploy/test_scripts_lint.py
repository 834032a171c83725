"""The container's command scripts: ShellCheck-clean POSIX sh, executable, and refusing bad arguments in one line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.container_build import REPO_ROOT

SCRIPTS = sorted((REPO_ROOT / "scripts").glob("*.sh"))


def test_shellcheck_finds_nothing() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "ShellCheck is not installed; install it with: sudo scripts/ensure-deploy-tools.sh"
    result = subprocess.run([shellcheck, "--shell=sh", *map(str, SCRIPTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", [*SCRIPTS, REPO_ROOT / "scripts" / "healthcheck.py"], ids=lambda p: p.name)
def test_script_is_executable(script: Path) -> None:
    assert script.stat().st_mode & 0o111 == 0o111


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["install-deps.sh", "everything"], "install-deps.sh: expected 'serve' or 'fold', got 'everything'"),
        (["build-repository.sh"], "build-repository.sh: missing OUT_DIR; usage: scripts/build-repository.sh OUT_DIR"),
        (
            ["verify-repository.sh"],
            "verify-repository.sh: missing REPO_DIR; usage: scripts/verify-repository.sh REPO_DIR",
        ),
    ],
)
def test_bad_arguments_get_one_line_with_the_fix(command: list[str], message: str) -> None:
    script = REPO_ROOT / "scripts" / command[0]
    result = subprocess.run([str(script), *command[1:]], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message)


def test_serve_refuses_an_empty_repository(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "BNFOLD_REPOSITORY": str(tmp_path)}
    script = str(REPO_ROOT / "scripts" / "serve.sh")
    result = subprocess.run([script], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr == (
        f"serve.sh: no model in {tmp_path} (no */model.json); build one with scripts/build-repository.sh {tmp_path}\n"
    )
