"""docker-compose.yml: valid against the compose-spec schema, parsed by a real compose client, and shaped as
the deployment needs (one-shot fold, healthcheck, restart, limits, scalable api behind nginx, loud secrets)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.container_build import REPO_ROOT
from tests.deploy.nginx_runner import PLACEHOLDER, TEMPLATE

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
CHECK_JSONSCHEMA = REPO_ROOT / ".venv" / "bin" / "check-jsonschema"


def compose_client() -> list[str]:
    """`docker compose` when the plugin is there, else the standalone `docker-compose`."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("no compose client; install one with: sudo scripts/ensure-deploy-tools.sh")


def compose_config(tmp_path: Path, api_key: str | None) -> subprocess.CompletedProcess[str]:
    """`compose config` run from an empty directory (no stray .env) with or without BNFOLD_API_KEY."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BNFOLD_", "COMPOSE_"))}
    if api_key is not None:
        env["BNFOLD_API_KEY"] = api_key
    command = [*compose_client(), "-f", str(COMPOSE_FILE), "config"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)


def schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    command = [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document["services"]


def test_valid_against_the_compose_spec_schema() -> None:
    result = schema_check(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    """Guards the guard: the same check fails on a compose file with a typo in a service key."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    restart: unless-stopped", "    restrat: unless-stopped", 1))
    result = schema_check(broken)
    assert result.returncode == 1 and "restrat" in result.stdout


def test_compose_client_resolves_the_file(tmp_path: Path) -> None:
    result = compose_config(tmp_path, api_key="s3cret")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"fold", "api", "lb"}
    assert resolved["services"]["api"]["environment"]["BNFOLD_API_KEY"] == "s3cret"


def test_missing_api_key_fails_loudly(tmp_path: Path) -> None:
    result = compose_config(tmp_path, api_key=None)
    assert result.returncode != 0
    assert "set BNFOLD_API_KEY to a secret" in result.stderr


def test_fold_is_one_shot_on_the_builder_image_and_writes_the_shared_volume(services: dict[str, Any]) -> None:
    fold = services["fold"]
    assert fold["build"]["target"] == "builder"
    assert fold["command"] == ["/opt/bnfold/scripts/fold.sh"]
    assert fold["restart"] == "no"
    assert "models:/models" in fold["volumes"]
    assert fold["environment"]["BNFOLD_REPOSITORY"] == "/models"


def test_api_starts_after_fold_succeeded_and_is_scalable(services: dict[str, Any]) -> None:
    api = services["api"]
    assert api["build"]["target"] == "runtime"
    assert api["depends_on"] == {"fold": {"condition": "service_completed_successfully"}}
    assert "container_name" not in api and "ports" not in api  # either would break --scale api=N
    assert api["volumes"] == ["models:/models:ro"]
    assert api["healthcheck"]["test"] == ["CMD", "python", "/opt/bnfold/scripts/healthcheck.py"]
    assert api["restart"] == "unless-stopped"
    limits = api["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and re.fullmatch(r"\d+[mg]", limits["memory"])


def test_lb_uses_the_tested_template_and_supplies_every_placeholder(services: dict[str, Any]) -> None:
    lb = services["lb"]
    source, target, mode = lb["volumes"][0].split(":")
    assert (REPO_ROOT / source).resolve() == TEMPLATE and mode == "ro"
    assert target.startswith("/etc/nginx/templates/") and target.endswith(".template")
    assert set(lb["environment"]) == set(PLACEHOLDER.findall(TEMPLATE.read_text()))
    assert lb["environment"]["BNFOLD_UPSTREAM"] == f"api:{services['api']['environment']['BNFOLD_PORT']}"
    assert lb["environment"]["NGINX_RESOLVER"] == "127.0.0.11"  # Docker's DNS: knows every api replica
    assert lb["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert lb["healthcheck"]["test"][-1].endswith("/lb/health")
    assert lb["restart"] == "unless-stopped" and "limits" in lb["deploy"]["resources"]
