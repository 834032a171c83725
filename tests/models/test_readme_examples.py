"""The README's curl command lines, run as written (the port aside) with the real curl against a real server."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_digits

from bnfold.service.settings import Settings
from tests.service.server import running_server

ROOT = Path(__file__).resolve().parents[2]
README_PORT = "localhost:8000"


def _readme_curl_lines() -> list[str]:
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    return [line for line in lines if line.startswith(f"curl -s {README_PORT}/") and " -d @examples/" in line]


def _digit_zero() -> np.ndarray:
    return (load_digits().data[0] / 16.0).astype(np.float32).reshape(1, 1, 8, 8)


def test_request_files_hold_a_real_digits_sample() -> None:
    v2 = json.loads((ROOT / "examples" / "digits_request.json").read_text())
    np.testing.assert_allclose(np.array(v2["inputs"][0]["data"]).reshape(1, 1, 8, 8), _digit_zero(), atol=5e-5)
    predict = json.loads((ROOT / "examples" / "digits_predict.json").read_text())
    np.testing.assert_allclose(np.array(predict["inputs"]), _digit_zero(), atol=5e-5)


def test_readme_curl_lines_answer(zoo_repository: Path) -> None:
    lines = _readme_curl_lines()
    assert [re.search(r"localhost:8000(\S+)", line).group(1) for line in lines] == [  # type: ignore[union-attr]
        "/v2/models/digits_resnet/infer",
        "/predict",
    ]
    session = ort.InferenceSession(str(zoo_repository / "digits_resnet" / "unfolded.onnx"))
    expected = session.run(None, {"input": _digit_zero()})[0]
    assert int(expected.argmax()) == 0  # the zoo net reads sample 0 as a "0"
    with running_server(Settings(repository=zoo_repository)) as server:
        address = server.url.removeprefix("http://")
        answers = []
        for line in lines:
            command = shlex.split(line.replace(README_PORT, address, 1))
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
            answers.append(json.loads(done.stdout))
    (v2_output,) = answers[0]["outputs"]
    assert v2_output["name"] == "logits" and v2_output["shape"] == [1, 10]
    assert np.max(np.abs(np.array(v2_output["data"]) - expected.ravel())) <= 1e-4
    predict = answers[1]
    assert set(predict) >= {"outputs", "folded_outputs", "unfolded_outputs"}, predict
    for key in ("folded_outputs", "unfolded_outputs"):
        logits = np.array(predict[key]["logits"]).ravel()
        assert int(logits.argmax()) == 0 and np.max(np.abs(logits - expected.ravel())) <= 1e-4, key
