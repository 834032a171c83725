"""The fold report page, served (/ui/models/{m}/report) and written by `bnfold inspect --html`, rendered in a
real headless Chromium: one chart mark per BatchNorm, in network order, at heights ordered like the errors,
the worst one marked, and the calibration figures equal to an independent measurement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.models.cli_helpers import bnfold
from tests.service.server import RunningServer
from tests.ui.conftest import DEFECTIVE, TAMPERED

READY_ZOO = ("breast_cancer_mlp", "digits_autoencoder", "digits_resnet")


def check_chart(browser: webdriver.Chrome, manifest: dict[str, Any]) -> None:
    """One mark per fold-report entry, in order, higher for larger errors; the largest one is 'worst'."""
    entries = manifest["fold_report"]["entries"]
    marks = browser.find_elements(By.CSS_SELECTOR, "svg.error-chart circle.bn-mark")
    assert len(marks) == len(entries)
    assert [mark.get_attribute("data-bn") for mark in marks] == [entry["bn"] for entry in entries]
    assert [float(str(mark.get_attribute("data-error"))) for mark in marks] == [e["max_error"] for e in entries]
    xs = [float(str(mark.get_attribute("cx"))) for mark in marks]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    heights = [float(str(mark.get_attribute("cy"))) for mark in marks]  # SVG y grows downwards
    errors = [entry["max_error"] for entry in entries]
    for i in range(len(entries)):
        for j in range(len(entries)):
            if errors[i] > errors[j]:
                assert heights[i] < heights[j], (entries[i]["bn"], entries[j]["bn"])
    worst = browser.find_elements(By.CSS_SELECTOR, "circle.bn-mark.worst")
    assert [mark.get_attribute("data-bn") for mark in worst] == [entries[int(np.argmax(errors))]["bn"]]
    table = browser.find_elements(By.CSS_SELECTOR, "table.bn-table tr.bn-row")
    assert [row.find_elements(By.TAG_NAME, "td")[1].text for row in table] == [entry["bn"] for entry in entries]
    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []


def calibration_max_abs(browser: webdriver.Chrome) -> list[float]:
    rows = browser.find_elements(By.CSS_SELECTOR, "table.calibration tr")[1:]
    return [float(row.find_elements(By.TAG_NAME, "td")[1].text) for row in rows]


@pytest.mark.parametrize("name", READY_ZOO)
def test_served_report_page(
    name: str, ui_server: RunningServer, browser: webdriver.Chrome, ui_repository: Path
) -> None:
    browser.get(f"{ui_server.url}/ui/models/{name}/report")
    manifest = json.loads((ui_repository / name / "model.json").read_text())
    check_chart(browser, manifest)
    metadata = ui_server.client.get(f"/v2/models/{name}").json()
    np.testing.assert_allclose(calibration_max_abs(browser), [metadata["calibration"]["max_abs_diff"]], rtol=6e-3)
    assert browser.find_element(By.CSS_SELECTOR, ".summary-line").text == manifest["fold_report"]["summary"]
    assert manifest["provenance"]["weights_sha256"] in browser.find_element(By.TAG_NAME, "footer").text


def test_the_report_of_an_unavailable_model_says_why_calibration_was_not_measured(
    ui_server: RunningServer, browser: webdriver.Chrome, ui_repository: Path
) -> None:
    browser.get(f"{ui_server.url}/ui/models/{TAMPERED}/report")
    check_chart(browser, json.loads((ui_repository / TAMPERED / "model.json").read_text()))
    reason = ui_server.client.get(f"/v2/models/{TAMPERED}").json()["reason"]
    section = browser.find_elements(By.TAG_NAME, "section")[1].text
    assert f"not measured — the model is unavailable: {reason}" in section
    assert browser.find_elements(By.CSS_SELECTOR, "table.calibration") == []


def test_a_report_with_no_batchnorm_entry_has_no_mark(ui_server: RunningServer, browser: webdriver.Chrome) -> None:
    browser.get(f"{ui_server.url}/ui/models/{DEFECTIVE}/report")
    assert browser.find_elements(By.CSS_SELECTOR, "circle.bn-mark") == []
    unknown = ui_server.client.get("/ui/models/nope/report")
    assert unknown.status_code == 404
    assert unknown.json()["error"].startswith("unknown model 'nope'; available models: ")


def reference_max_abs(entry: Path, manifest: dict[str, Any]) -> list[float]:
    """max |folded − unfolded| per output on calibration.npz, from onnxruntime directly (graphs as written)."""
    feeds = dict(np.load(entry / "calibration.npz"))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outputs = []
    for variant in ("folded", "unfolded"):
        path = str(entry / manifest["variants"][variant]["file"])
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, feeds))
    return [float(np.abs(f.astype(np.float64) - u).max()) for f, u in zip(*outputs, strict=True)]


@pytest.mark.parametrize("name", ("digits_resnet", "breast_cancer_mlp"))
def test_inspect_writes_a_self_contained_page(
    name: str, capsys: pytest.CaptureFixture[str], zoo_repository: Path, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    entry, out = zoo_repository / name, tmp_path / f"{name}.html"
    ran = bnfold(capsys, "inspect", entry, "--html", out, "--json")
    assert ran.code == 0, ran.err
    manifest = json.loads((entry / "model.json").read_text())
    expected = reference_max_abs(entry, manifest)
    assert [row["max_abs"] for row in ran.json()["calibration"]] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    page = out.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("<link") == 1 and '<link rel="icon" href="data:,">' in page  # no favicon request
    browser.get(out.as_uri())
    check_chart(browser, manifest)
    np.testing.assert_allclose(calibration_max_abs(browser), expected, rtol=6e-3)
