"""The container's commands, run outside Docker on the two stages rebuilt as fresh virtualenvs (conftest.py):
the builder builds and verifies the default repository, the runtime (no PyTorch) serves it through
scripts/serve.sh, scripts/healthcheck.py tells ready from not, and inference answers match onnxruntime run
directly on the unfolded graph."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bnfold.folding.report import Action, FoldReport
from tests.deploy.container_build import REPO_ROOT, StageEnvironment
from tests.deploy.reference import InferenceCase, batchnorm_nodes
from tests.deploy.replicas import Replica, free_port, http

pytestmark = pytest.mark.slow
HEALTHCHECK = REPO_ROOT / "scripts" / "healthcheck.py"


@pytest.fixture(scope="module")
def replica(
    runtime: StageEnvironment, default_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    log = tmp_path_factory.mktemp("replica") / "serve.log"
    server = Replica(runtime, default_repository, "127.0.0.1", free_port("127.0.0.1"), log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def healthcheck(host: str, port: int) -> subprocess.CompletedProcess[str]:
    env = {"BNFOLD_HOST": host, "BNFOLD_PORT": str(port), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, str(HEALTHCHECK)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_builder_wrote_verified_entries_with_batchnorm_folded_away(default_repository: Path) -> None:
    entries = sorted(path.parent for path in default_repository.glob("*/model.json"))
    assert len(entries) >= 2
    for entry in entries:
        manifest = json.loads((entry / "model.json").read_text())
        unfolded = batchnorm_nodes(entry / manifest["variants"]["unfolded"]["file"])
        folded = batchnorm_nodes(entry / manifest["variants"]["folded"]["file"])
        assert unfolded > 0 and unfolded == manifest["variants"]["unfolded"]["batchnorm_nodes"]
        assert folded == manifest["variants"]["folded"]["batchnorm_nodes"]
        assert folded == FoldReport.from_json(manifest["fold_report"]).count(Action.KEPT)


def test_runtime_stage_has_onnxruntime_but_no_torch(runtime: StageEnvironment) -> None:
    assert runtime.has_module("onnxruntime") and runtime.has_module("bnfold.service.app")
    assert not runtime.has_module("torch")
    assert not runtime.has_module("onnx")


def test_healthcheck_fails_when_nothing_listens() -> None:
    port = free_port("127.0.0.1")
    result = healthcheck("0.0.0.0", port)
    assert result.returncode == 1
    assert result.stderr.startswith(f"healthcheck: http://127.0.0.1:{port}/v2/health/ready unreachable:")


def test_healthcheck_passes_on_the_ready_server(replica: Replica) -> None:
    result = healthcheck(replica.host, replica.port)
    assert (result.returncode, result.stderr) == (0, "")


def test_served_outputs_match_onnxruntime_on_the_unfolded_graph(replica: Replica, case: InferenceCase) -> None:
    for path in (f"/v2/models/{case.model}/infer", f"/v2/models/{case.model}/versions/unfolded/infer"):
        status, _, body = http("POST", replica.url + path, case.request)
        assert status == 200, body
        case.check(json.loads(body))


def test_api_key_from_the_environment_is_enforced(replica: Replica, case: InferenceCase) -> None:
    status, _, body = http("POST", f"{replica.url}/v2/models/{case.model}/infer", case.request, token=None)
    assert status == 401
    assert json.loads(body) == {
        "error": "missing or wrong bearer token; send the header 'Authorization: Bearer <BNFOLD_API_KEY>'"
    }
