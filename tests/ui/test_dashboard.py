"""The /ui dashboard in a real headless Chromium against a real server: models and states, the drawing grid
against the V2 endpoint, fail-over shown live, and the page's polling kept out of the inference counters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait
from sklearn.datasets import load_digits

from bench.browser import draw_on_grid
from tests.prometheus_text import metric_sum
from tests.service.oracle import json_request
from tests.service.server import RunningServer
from tests.ui.conftest import DEFECTIVE, TAMPERED

ZOO = ("breast_cancer_mlp", "digits_autoencoder", "digits_mobilenet", "digits_resnet")


def open_dashboard(browser: webdriver.Chrome, server: RunningServer, models: int) -> dict[str, WebElement]:
    """Load /ui and wait for the first summary: one row per model, by name."""
    browser.get(server.url + "/ui")
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#models tbody tr")) == models)
    rows = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
    return {str(row.get_attribute("data-model")): row for row in rows}


def cell(row: WebElement, name: str) -> str:
    return row.find_element(By.CSS_SELECTOR, f"td.{name}").text


def metric(server: RunningServer, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, read from /metrics."""
    return metric_sum(server.client.get("/metrics").text, name, **labels)


def test_every_model_is_listed_with_its_state_and_batchnorm_counts(
    ui_server: RunningServer, browser: webdriver.Chrome, ui_repository: Path
) -> None:
    rows = open_dashboard(browser, ui_server, 5)
    index = {m["name"]: m for m in ui_server.client.get("/v2/models").json()["models"]}
    assert sorted(rows) == sorted(index) == sorted((*ZOO, DEFECTIVE))
    for name, row in rows.items():
        assert row.get_attribute("data-state") == index[name]["state"]
        assert cell(row, "state").splitlines()[0] == index[name]["state"]
        link = row.find_element(By.CSS_SELECTOR, "td.name a")
        assert link.get_attribute("href") == f"{ui_server.url}/ui/models/{name}/report"
    tampered = index[TAMPERED]
    assert tampered["state"] == "unavailable" and tampered["reason"].startswith("sha256 of folded.onnx is ")
    assert cell(rows[TAMPERED], "state").splitlines()[1] == tampered["reason"]
    assert [index[name]["state"] for name in ZOO if name != TAMPERED] == ["ready"] * 3
    for name in ZOO:
        if name == TAMPERED:
            continue
        manifest = json.loads((ui_repository / name / "model.json").read_text())
        actions = [entry["action"] for entry in manifest["fold_report"]["entries"]]
        folded = sum(a.startswith("folded_into") for a in actions)
        lowered, kept = actions.count("lowered_to_scale_shift"), actions.count("kept")
        assert cell(rows[name], "bn") == f"{folded} / {lowered} / {kept}"
        variants = manifest["variants"]
        assert (
            cell(rows[name], "bn-nodes")
            == f"{variants['unfolded']['batchnorm_nodes']} → {variants['folded']['batchnorm_nodes']}"
        )
        assert cell(rows[name], "answers") == "folded"


def shown_logits(browser: webdriver.Chrome, variant: str) -> list[float]:
    rows = browser.find_elements(By.CSS_SELECTOR, f"#{variant}-outputs .bar-row")
    return [float(row.find_elements(By.TAG_NAME, "span")[-1].text) for row in rows]


def test_a_drawn_digit_gets_the_class_the_v2_endpoint_gives(
    ui_server: RunningServer, browser: webdriver.Chrome, rng: np.random.Generator
) -> None:
    digits = load_digits()
    open_dashboard(browser, ui_server, 5)
    for index in rng.choice(len(digits.data), size=3, replace=False):
        cells = [int(i) for i in np.flatnonzero(digits.data[index] > 8)]
        draw_on_grid(browser, "digits_resnet", cells)
        x = np.zeros(64, np.float32)
        x[cells] = 1.0
        x = x.reshape(1, 1, 8, 8)
        logits = {}
        for variant in ("folded", "unfolded"):
            answer = ui_server.client.post(f"/v2/models/digits_resnet/versions/{variant}/infer", json=json_request(x))
            logits[variant] = np.asarray(answer.json()["outputs"][0]["data"], np.float64)
        default = ui_server.client.post("/v2/models/digits_resnet/infer", json=json_request(x)).json()
        v2_class = int(np.argmax(default["outputs"][0]["data"]))
        assert browser.find_element(By.ID, "folded-class").text == str(v2_class), f"digits sample {index}"
        assert browser.find_element(By.ID, "unfolded-class").text == str(v2_class), f"digits sample {index}"
        for variant in ("folded", "unfolded"):
            np.testing.assert_allclose(shown_logits(browser, variant), logits[variant], atol=6e-5)
        shown_diff = float(browser.find_element(By.ID, "max-diff").text)
        np.testing.assert_allclose(shown_diff, np.abs(logits["folded"] - logits["unfolded"]).max(), rtol=6e-3)
        assert browser.find_element(By.ID, "agree").text == "yes"


def test_a_mismatch_while_serving_shows_the_fail_over(
    ui_server: RunningServer, browser: webdriver.Chrome, rng: np.random.Generator
) -> None:
    rows = open_dashboard(browser, ui_server, 5)
    assert cell(rows[DEFECTIVE], "answers") == "folded"
    beyond_calibration = rng.uniform(5, 10, (2, 1, 8, 8)).astype(np.float32)  # folded clips at ±2: mismatch
    answer = ui_server.client.post(f"/v2/models/{DEFECTIVE}/infer", json=json_request(beyond_calibration)).json()
    assert answer["model_version"] == "unfolded" and answer["parameters"]["bnfold_failed_over"] is True
    stats = ui_server.client.get(f"/v2/models/{DEFECTIVE}/stats").json()["bnfold"][DEFECTIVE]
    failovers = int(metric(ui_server, "bnfold_failovers_total", model=DEFECTIVE))
    row = rows[DEFECTIVE]
    WebDriverWait(browser, 10).until(lambda _: cell(row, "answers").startswith("unfolded"))
    assert cell(row, "answers") == f"unfolded (failed over, {failovers})"
    assert cell(row, "checks") == str(stats["equivalence"]["checks"])
    assert cell(row, "mismatches") == str(stats["equivalence"]["mismatches"]) == "1"
    worst = stats["equivalence"]["max_abs_diff_seen"]
    np.testing.assert_allclose(float(cell(row, "worst")), worst, rtol=6e-3)


def test_the_page_polls_without_counting_as_inference(
    ui_server: RunningServer, browser: webdriver.Chrome, rng: np.random.Generator
) -> None:
    inference_before = metric(ui_server, "bnfold_requests_total")
    polls_before = metric(ui_server, "bnfold_ui_requests_total", route="/ui/api/summary", status="200")
    open_dashboard(browser, ui_server, 5)
    WebDriverWait(browser, 15, poll_frequency=0.2).until(
        lambda _: (
            metric(ui_server, "bnfold_ui_requests_total", route="/ui/api/summary", status="200") >= polls_before + 3
        )
    )
    assert metric(ui_server, "bnfold_requests_total") == inference_before
    assert metric(ui_server, "bnfold_ui_requests_total", route="/ui", status="200") >= 1

    for _ in range(20):
        x = rng.uniform(0, 1, (1, 1, 8, 8)).astype(np.float32)
        assert (
            ui_server.client.post("/v2/models/digits_resnet/versions/unfolded/infer", json=json_request(x)).status_code
            == 200
        )
    row = open_dashboard(browser, ui_server, 5)["digits_resnet"]
    WebDriverWait(browser, 10).until(lambda _: float(cell(row, "unfolded-rps")) > 0)
    p50, p99 = float(cell(row, "unfolded-p50")), float(cell(row, "unfolded-p99"))
    assert 0 < p50 <= p99
    assert metric(ui_server, "bnfold_requests_total") == inference_before + 20


def test_other_models_get_an_input_editor_prefilled_with_a_calibration_sample(
    ui_server: RunningServer, browser: webdriver.Chrome, ui_repository: Path
) -> None:
    batch = np.load(ui_repository / "breast_cancer_mlp" / "calibration.npz")["features"]
    open_dashboard(browser, ui_server, 5)
    Select(browser.find_element(By.ID, "try-model")).select_by_value("breast_cancer_mlp")
    editor = browser.find_element(By.ID, "editor")
    WebDriverWait(browser, 10).until(lambda _: editor.get_attribute("value"))
    assert editor.is_displayed() and not browser.find_element(By.ID, "grid").is_displayed()
    text = str(editor.get_attribute("value"))
    np.testing.assert_array_equal(np.asarray(json.loads(text)["features"], np.float32), batch[:1])
    browser.find_element(By.ID, "run-editor").click()
    result = browser.find_element(By.ID, "result")
    WebDriverWait(browser, 10).until(lambda _: result.get_attribute("data-input-key") == text)
    assert result.get_attribute("data-model") == "breast_cancer_mlp"
    request = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": batch[0].tolist()}]}
    logits = ui_server.client.post("/v2/models/breast_cancer_mlp/infer", json=request).json()["outputs"][0]["data"]
    assert browser.find_element(By.ID, "folded-class").text == str(int(np.argmax(logits)))
    assert browser.find_element(By.ID, "unfolded-class").text == str(int(np.argmax(logits)))
    np.testing.assert_allclose(shown_logits(browser, "folded"), logits, atol=6e-5)
