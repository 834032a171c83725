"""/ui with BNFOLD_API_KEY set, in a real browser (login form, HttpOnly SameSite=Strict cookie), and the
dashboard's JSON endpoints (calibration sample, predict with both variants) against the repository files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
from pydantic import SecretStr
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from bench.browser import draw_on_grid
from bnfold.service.settings import Settings
from tests.service.oracle import run_directly
from tests.service.server import RunningServer, running_server

KEY = "ui-test-key"
UNAUTHORIZED = "missing or wrong API key; log in at /ui/login or send 'Authorization: Bearer <BNFOLD_API_KEY>'"


@pytest.fixture(scope="module")
def keyed_server(zoo_repository: Path) -> Iterator[RunningServer]:
    with running_server(Settings(repository=zoo_repository, api_key=SecretStr(KEY))) as running:
        yield running


def log_in(browser: webdriver.Chrome, key: str) -> None:
    field = browser.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    browser.find_element(By.ID, "login-button").click()


def test_the_browser_logs_in_with_the_key_and_keeps_it_in_an_http_only_cookie(
    keyed_server: RunningServer, browser: webdriver.Chrome
) -> None:
    browser.delete_all_cookies()
    browser.get(keyed_server.url + "/ui")
    assert browser.find_elements(By.ID, "models") == []  # the login form, not the dashboard
    log_in(browser, "wrong-key")
    # The form posts and the browser loads the answer: an element of the old page may go stale while it does.
    WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.ID, "login-error").text
    )
    assert browser.find_element(By.ID, "login-error").text == "That is not the service's API key."
    log_in(browser, KEY)
    WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#models tbody tr")) == 4
    )
    assert browser.current_url == keyed_server.url + "/ui"
    (cookie,) = browser.get_cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
        "bnfold_ui",
        True,
        "Strict",
        "/ui",
    )
    assert KEY not in cookie["value"]
    assert browser.execute_script("return document.cookie") == ""
    key = draw_on_grid(browser, "digits_resnet", [3, 4, 11, 12, 19, 20, 27, 28, 35, 36, 43, 44, 51, 52])  # a "1"
    assert browser.find_element(By.ID, "result").get_attribute("data-input-key") == key
    assert browser.find_element(By.ID, "folded-class").text == browser.find_element(By.ID, "unfolded-class").text

    with httpx.Client(base_url=keyed_server.url) as client:
        assert client.get("/ui/api/summary").status_code == 401
        assert client.get("/ui/api/summary").json() == {"error": UNAUTHORIZED}
        assert client.get("/ui/api/summary", headers={"Cookie": "bnfold_ui=forged"}).status_code == 401
        assert client.get("/ui/api/summary", headers={"Cookie": f"bnfold_ui={cookie['value']}"}).status_code == 200
        assert client.get("/ui/api/summary", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        page = client.get("/ui/models/digits_resnet/report")
        assert page.status_code == 401 and 'action="/ui/login"' in page.text
        # The cookie opens only the UI: the V2 API still wants the bearer token.
        assert client.get("/v2/models", headers={"Cookie": f"bnfold_ui={cookie['value']}"}).status_code == 401

    browser.find_element(By.CSS_SELECTOR, "header form button").click()  # log out
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "key"))
    assert browser.get_cookies() == []


def test_a_login_never_redirects_off_the_ui(keyed_server: RunningServer) -> None:
    cases = [("/ui/models/digits_resnet/report", "/ui/models/digits_resnet/report"), ("https://example.org/", "/ui"),
             ("//example.org/ui", "/ui"), ("/v2/models", "/ui")]  # fmt: skip
    for target, expected in cases:
        form = urlencode({"key": KEY, "next": target})
        answer = keyed_server.client.post(
            "/ui/login", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert (answer.status_code, answer.headers["location"]) == (303, expected)


def test_the_sample_endpoint_serves_the_calibration_batch(ui_server: RunningServer, ui_repository: Path) -> None:
    batch = np.load(ui_repository / "breast_cancer_mlp" / "calibration.npz")["features"]
    for index in (0, 5, len(batch) - 1, len(batch) + 2):
        sample = ui_server.client.get(f"/ui/api/models/breast_cancer_mlp/sample?index={index}").json()
        assert (sample["index"], sample["count"]) == (index % len(batch), len(batch))
        np.testing.assert_array_equal(
            np.asarray(sample["inputs"]["features"], np.float32), batch[index % len(batch)][None]
        )
    bad = ui_server.client.get("/ui/api/models/breast_cancer_mlp/sample?index=-1")
    assert (bad.status_code, bad.json()) == (400, {"error": "'index' is '-1'; give a sample number, like ?index=0"})
    refused = ui_server.client.get("/ui/api/models/digits_mobilenet/sample")
    assert refused.status_code == 503 and refused.json()["error"].startswith(
        "model 'digits_mobilenet' is not ready: sha256"
    )


def test_predict_both_returns_both_variants_outputs(ui_server: RunningServer, ui_repository: Path) -> None:
    x = np.load(ui_repository / "digits_resnet" / "calibration.npz")["input"][:3]
    for path in ("/predict", "/ui/api/predict"):
        body = ui_server.client.post(
            path, json={"model": "digits_resnet", "inputs": x.tolist(), "variant": "both"}
        ).json()
        for variant in ("folded", "unfolded"):
            expected = run_directly(ui_repository / "digits_resnet", variant, x)
            np.testing.assert_allclose(body[f"{variant}_outputs"]["logits"], expected, rtol=1e-5, atol=1e-6)
        assert body["outputs"] == body["folded_outputs"]
        difference = np.abs(
            np.asarray(body["folded_outputs"]["logits"]) - np.asarray(body["unfolded_outputs"]["logits"])
        )
        assert body["equivalence"]["max_abs_diff"] == pytest.approx(difference.max(), rel=1e-6, abs=1e-12)
