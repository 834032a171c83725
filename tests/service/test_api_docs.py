"""/docs works offline: the page and every asset it references come from the server itself, it is public (like
/openapi.json), and a headless browser renders the service's operations from it."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bnfold.service.api_docs import assets_directory
from bnfold.service.settings import Settings
from tests.service.builders import write_entry
from tests.service.server import RunningServer, running_server

KEY = "docs-test-key"
REFERENCE = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("docs")
    write_entry(root, "digits", rng)
    with running_server(Settings(repository=root, api_key=KEY)) as running:
        yield running


def test_docs_page_references_only_this_server(server: RunningServer) -> None:
    response = server.client.get("/docs")  # no bearer token: public
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    html = response.text
    assert re.findall(r"https?://|//[a-z]", html, flags=re.IGNORECASE) == []  # no absolute or scheme-relative URL
    references = sorted(set(REFERENCE.findall(html)))
    assert references == [
        "/docs/assets/favicon.png",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
    ]
    assert "url: '/openapi.json'" in html and '"validatorUrl": null' in html
    for reference in references:
        asset = server.client.get(reference)
        local = assets_directory() / Path(reference).name
        assert (asset.status_code, asset.content) == (200, local.read_bytes()), reference
        assert asset.headers["content-type"].startswith(CONTENT_TYPES[Path(reference).suffix]), reference
    assert len(server.client.get("/docs/assets/swagger-ui-bundle.js").content) > 500_000  # the real bundle


def test_docs_and_schema_are_public_while_operations_stay_protected(server: RunningServer) -> None:
    assert server.client.get("/openapi.json").status_code == 200
    unauthorised = server.client.get("/v2/models")
    assert (unauthorised.status_code, unauthorised.json()) == (
        401,
        {"error": "missing or wrong bearer token; send the header 'Authorization: Bearer <BNFOLD_API_KEY>'"},
    )
    missing = server.client.get("/docs/assets/no-such-file.js")
    assert missing.status_code == 404


def test_headless_browser_renders_the_operations(server: RunningServer, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed; install it with: sudo scripts/ensure-deploy-tools.sh"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        f"{server.url}/docs",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    schema = server.client.get("/openapi.json").json()
    operations = sorted((method.upper(), path) for path, item in schema["paths"].items() for method in item)
    rendered = sorted(
        set(re.findall(r'opblock-summary-method">(\w+)</span>.*?data-path="([^"]+)"', dom, flags=re.DOTALL))
    )
    assert len(operations) >= 10
    assert rendered == operations
