"""deploy/k8s: every manifest validates strictly against the Kubernetes schema, and they fit together
(probes on the V2 health endpoints, Service and PDB select the Deployment's pods, HPA scales it)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.container_build import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
VALIDATOR = REPO_ROOT / ".venv" / "bin" / "kubernetes-validate"
KUBERNETES_VERSION = "1.30.0"
MANIFESTS = ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    command = [str(VALIDATOR), "--strict", "-k", KUBERNETES_VERSION, str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return document


@pytest.fixture(scope="module")
def container() -> dict[str, Any]:
    (only,) = load("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_strictly(name: str) -> None:
    result = validate(K8S / name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


def test_validator_rejects_a_misplaced_field(tmp_path: Path) -> None:
    """Guards the guard: strict validation fails on an unknown field in the pod spec."""
    broken = tmp_path / "deployment.yaml"
    broken.write_text((K8S / "deployment.yaml").read_text().replace("readinessProbe:", "readynessProbe:"))
    assert validate(broken).returncode != 0


def test_kustomization_lists_every_manifest() -> None:
    assert sorted(load("kustomization.yaml")["resources"]) == sorted(MANIFESTS)
    assert sorted(path.name for path in K8S.glob("*.yaml")) == sorted([*MANIFESTS, "kustomization.yaml"])


def test_probes_use_the_v2_health_endpoints_on_the_served_port(container: dict[str, Any]) -> None:
    (port,) = container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port["name"]}
    environment = {item["name"]: item for item in container["env"]}
    assert environment["BNFOLD_PORT"]["value"] == str(port["containerPort"])
    assert environment["BNFOLD_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "bnfold-api-key", "key": "api-key"}


def test_pods_run_as_the_images_non_root_user(container: dict[str, Any]) -> None:
    pod = load("deployment.yaml")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] and container["resources"]["requests"]


def test_service_pdb_and_hpa_point_at_the_deployment() -> None:
    deployment = load("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert load("service.yaml")["spec"]["selector"] == labels
    assert load("pdb.yaml")["spec"]["selector"]["matchLabels"] == labels
    target = load("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert load("service.yaml")["spec"]["ports"][0]["targetPort"] == "http"
