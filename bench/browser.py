"""Headless Chromium driven by Selenium, for the UI tests and `make screenshots`.

Uses Debian's `chromium` and `/usr/bin/chromedriver` (scripts/ensure-deploy-tools.sh installs them); the
driver path is given explicitly so Selenium Manager never tries to download a browser or a driver. Each
browser gets a fresh profile directory, removed afterwards.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh --user-data-dir, quit when the block ends."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.access(program, os.X_OK):
            raise RuntimeError(f"{program} is missing; install it with: sudo scripts/ensure-deploy-tools.sh")
    with tempfile.TemporaryDirectory(prefix="bnfold-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def full_page_screenshot(driver: webdriver.Chrome, path: str, width: int) -> None:
    """Resize the window to the page's whole height, then save a PNG of it."""
    driver.set_window_size(width, 1000)
    chrome = int(driver.execute_script("return window.outerHeight - window.innerHeight"))
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, height + chrome)
    driver.save_screenshot(path)


def draw_on_grid(driver: webdriver.Chrome, model: str, cells: list[int]) -> str:
    """Choose `model` in the dashboard's "try it" panel, click its 8×8 grid cells (indices 0…63, row-major)
    and wait until the prediction shown is for exactly that drawing; returns the grid's key (the 64 cell
    values joined by commas)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#try-model option[value="{model}"]:not([disabled])'),
        f"model {model} is never offered as ready in the try-it panel",
    )
    Select(driver.find_element(By.ID, "try-model")).select_by_value(model)
    driver.find_element(By.ID, "clear-grid").click()
    for index in cells:
        driver.find_element(By.CSS_SELECTOR, f'#grid .cell[data-index="{index}"]').click()
    key = ",".join("1" if index in set(cells) else "0" for index in range(64))
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.ID, "result").get_attribute("data-input-key") == key,
        f"the prediction for the drawing {key} never appeared",
    )
    return key
