"""`make screenshots`: the dashboard and a fold report page, as PNGs in docs/ (shown by the README).

Builds the default repository (or reuses --repository), serves it with every default request checked,
sends some V2 traffic so the live figures move, draws a digit from sklearn's digits set on the dashboard's
grid, and saves both pages from headless Chromium.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from bench.browser import draw_on_grid, full_page_screenshot, headless_chromium
from bench.processes import ROOT, bnfold_serve
from bnfold.models.default_repository import build_default

WIDTH = 1440
DIGIT_SAMPLE = 3  # index into sklearn's load_digits: a clear "3"


def digit_cells(index: int) -> list[int]:
    """Grid cells (row-major) of one sklearn digits image whose value is over 8 of 16."""
    from sklearn.datasets import load_digits

    return [int(i) for i in np.flatnonzero(load_digits().data[index] > 8)]


def send_traffic(url: str, stop: threading.Event) -> None:
    """V2 requests until `stop` is set: default ones on two models, and some on digits_resnet's unfolded."""
    rng = np.random.default_rng(0)
    targets = [
        ("/v2/models/digits_resnet/infer", "input", [1, 1, 8, 8]),
        ("/v2/models/breast_cancer_mlp/infer", "features", [1, 30]),
        ("/v2/models/digits_resnet/versions/unfolded/infer", "input", [1, 1, 8, 8]),
    ]
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            for path, name, shape in targets:
                data = rng.random(int(np.prod(shape))).tolist()
                client.post(path, json={"inputs": [{"name": name, "datatype": "FP32", "shape": shape, "data": data}]})
            time.sleep(0.03)


def take(repository: Path, out: Path) -> None:
    with bnfold_serve(repository, equivalence_policy="always") as server:
        url = f"http://127.0.0.1:{server.port}"
        stop = threading.Event()
        traffic = threading.Thread(target=send_traffic, args=(url, stop), daemon=True)
        traffic.start()
        try:
            with headless_chromium(WIDTH, 1000) as driver:
                driver.get(url + "/ui")
                WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#models tbody tr"))
                draw_on_grid(driver, "digits_resnet", digit_cells(DIGIT_SAMPLE))
                time.sleep(12)  # a full rate window of traffic, then one more poll
                full_page_screenshot(driver, str(out / "ui-dashboard.png"), WIDTH)
                driver.set_window_size(1200, 1000)
                driver.get(url + "/ui/models/digits_resnet/report")
                full_page_screenshot(driver, str(out / "ui-fold-report.png"), 1200)
        finally:
            stop.set()
            traffic.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository", help="built when missing")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    build_default(args.repository)  # reuses the entries already built
    take(args.repository, args.out)
    print(f"wrote {args.out / 'ui-dashboard.png'} and {args.out / 'ui-fold-report.png'}")


if __name__ == "__main__":
    main()
