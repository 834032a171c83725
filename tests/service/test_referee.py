"""The rounding referee on real zoo models served over loopback: a disagreement that float32 rounding explains
(inputs at 1000× their scale, an arg-max tie found by bisection) never degrades folded; a real defect still
fails over; a degraded folded variant is cleared by re-verification, on evidence, without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bnfold.service.loader import session_configs
from bnfold.service.runtime import open_session
from bnfold.service.settings import Settings
from tests.service.builders import Weights, build_graph, write_entry
from tests.service.oracle import json_request
from tests.service.server import RunningServer, running_server
from tests.service.test_failover import sample

KEY = "referee-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def calibration(entry: Path) -> np.ndarray:
    with np.load(entry / "calibration.npz") as archive:
        return np.asarray(archive["input"])


def predict_both(server: RunningServer, model: str, x: np.ndarray) -> dict:
    body = {"model": model, "variant": "both", "inputs": x.tolist()}
    response = server.client.post("/predict", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def zoo_server(zoo_repository: Path) -> Iterator[RunningServer]:
    settings = Settings(repository=zoo_repository, equivalence_policy="off", api_key=KEY)
    with running_server(settings) as running:
        yield running


def test_rounding_far_outside_the_training_range_does_not_degrade_folded(
    zoo_server: RunningServer, zoo_repository: Path
) -> None:
    x = calibration(zoo_repository / "digits_autoencoder") * np.float32(1000)
    answer = predict_both(zoo_server, "digits_autoencoder", x)
    equivalence = answer["equivalence"]
    assert equivalence["agree"] is False and equivalence["within_tolerance"] is False  # beyond the tolerance
    assert equivalence["max_abs_diff"] < 1e-2  # by rounding only: small against outputs of scale ~1
    assert (answer["variant"], answer["failed_over"]) == ("folded", False)
    assert equivalence["rounding_explained"] is True

    stats = zoo_server.client.get("/v2/models/digits_autoencoder/stats", headers=AUTH).json()["bnfold"][
        "digits_autoencoder"
    ]
    assert stats["folded_degraded"] is None and stats["default_version"] == "folded"
    figures = stats["equivalence"]
    assert (figures["mismatches"], figures["rounding_explained"], figures["confirmed_defects"]) == (1, 1, 0)
    assert "explained by float32 rounding" in figures["last_mismatch"]
    assert zoo_server.client.get("/v2/models/digits_autoencoder/versions/folded/ready").status_code == 200
    default = zoo_server.client.post(
        "/v2/models/digits_autoencoder/infer", json=json_request(x[:2]), headers=AUTH
    ).json()
    assert default["model_version"] == "folded"
    metrics = zoo_server.client.get("/metrics").text
    assert sample(metrics, "bnfold_equivalence_rounding_explained_total", model="digits_autoencoder") == 1
    assert sample(metrics, "bnfold_folded_degraded", model="digits_autoencoder") == 0


def arg_max_tie(entry: Path) -> np.ndarray:
    """An input on which folded and unfolded (opened as the server opens them) pick different arg-maxes:
    bisection between two calibration samples of different classes, towards the boundary of unfolded's class."""
    configs = session_configs(Settings(repository=entry.parent), 2 * len(list(entry.parent.iterdir())))
    sessions = {name: open_session(entry / f"{name}.onnx", config) for name, config in configs.items()}

    def logits(variant: str, x: np.ndarray) -> np.ndarray:
        return np.asarray(sessions[variant].run(None, {"input": x[None]})[0][0])

    batch = calibration(entry)
    classes = [int(logits("unfolded", x).argmax()) for x in batch]
    for i in range(len(batch)):
        for j in range(i + 1, len(batch)):
            if classes[i] == classes[j]:
                continue
            low, high = 0.0, 1.0
            for _ in range(60):
                middle = (low + high) / 2
                x = (batch[i] + middle * (batch[j] - batch[i])).astype(np.float32)
                unfolded = int(logits("unfolded", x).argmax())
                if unfolded != int(logits("folded", x).argmax()):
                    return x[None]
                low, high = (middle, high) if unfolded == classes[i] else (low, middle)
    raise AssertionError("no arg-max tie found between any two calibration samples")


def test_an_arg_max_tie_is_not_a_disagreement_of_substance(zoo_server: RunningServer, zoo_repository: Path) -> None:
    x = arg_max_tie(zoo_repository / "digits_resnet")
    answer = predict_both(zoo_server, "digits_resnet", x)
    equivalence = answer["equivalence"]
    assert equivalence["argmax_agree"] is False and equivalence["within_tolerance"] is True
    assert (answer["variant"], answer["failed_over"]) == ("folded", False)
    assert equivalence["agree"] is False and equivalence["rounding_explained"] is True
    stats = zoo_server.client.get("/v2/models/digits_resnet/stats", headers=AUTH).json()["bnfold"]["digits_resnet"]
    assert stats["folded_degraded"] is None
    assert (stats["equivalence"]["rounding_explained"], stats["equivalence"]["confirmed_defects"]) == (1, 0)


def test_reverify_clears_a_degradation_the_referee_does_not_confirm(zoo_repository: Path) -> None:
    """With the referee off, rounding at 1000× degrades folded; re-verification (which always consults the
    referee) clears it without a restart."""
    settings = Settings(repository=zoo_repository, equivalence_policy="off", api_key=KEY, equivalence_referee=False)
    x = calibration(zoo_repository / "digits_autoencoder") * np.float32(1000)
    with running_server(settings) as server:
        answer = predict_both(server, "digits_autoencoder", x)
        assert answer["equivalence"]["rounding_explained"] is False and answer["failed_over"] is True
        assert server.client.get("/v2/models/digits_autoencoder/versions/folded/ready").status_code == 503

        assert server.client.post("/v2/models/digits_autoencoder/reverify").status_code == 401
        cleared = server.client.post("/v2/models/digits_autoencoder/reverify", headers=AUTH)
        assert cleared.status_code == 200, cleared.text
        assert cleared.json() == {
            "name": "digits_autoencoder",
            "verified": ["the calibration batch", "offending sample 1"],
            "cleared": True,
        }
        assert server.client.get("/v2/models/digits_autoencoder/versions/folded/ready").status_code == 200
        stats = server.client.get("/v2/models/digits_autoencoder/stats", headers=AUTH).json()["bnfold"][
            "digits_autoencoder"
        ]
        assert stats["folded_degraded"] is None and stats["equivalence"]["reverifications"] == 1
        default = server.client.post("/v2/models/digits_autoencoder/infer", json=json_request(x[:1]), headers=AUTH)
        assert default.json()["model_version"] == "folded"
        again = server.client.post("/v2/models/digits_autoencoder/reverify", headers=AUTH).json()
        assert again == {"name": "digits_autoencoder", "verified": ["the calibration batch"], "cleared": False}
        metrics = server.client.get("/metrics").text
        assert sample(metrics, "bnfold_reverifications_total", model="digits_autoencoder", outcome="verified") == 2
        assert sample(metrics, "bnfold_folded_degraded", model="digits_autoencoder") == 0
        unknown = server.client.post("/v2/models/nope/reverify", headers=AUTH)
        assert unknown.status_code == 404 and unknown.json()["error"].startswith("unknown model 'nope'")


def test_a_real_defect_is_confirmed_and_stays_degraded(tmp_path: Path, rng: np.random.Generator) -> None:
    """A folded model that clips its input at ±2 (invisible on the calibration batch in [-1, 1])."""
    weights = Weights.random(rng)
    write_entry(
        tmp_path, "clipped", rng, weights=weights, folded_model=build_graph(weights, folded=True, clip_input=2.0)
    )
    x = rng.uniform(5, 10, (3, 1, 8, 8)).astype(np.float32)
    with running_server(Settings(repository=tmp_path, equivalence_policy="always", api_key=KEY)) as server:
        answer = server.client.post("/v2/models/clipped/infer", json=json_request(x), headers=AUTH).json()
        assert answer["model_version"] == "unfolded" and answer["parameters"]["bnfold_failed_over"] is True
        assert answer["parameters"]["bnfold_rounding_explained"] is False
        refused = server.client.post("/v2/models/clipped/reverify", headers=AUTH)
        assert refused.status_code == 409
        message = refused.json()["error"]
        assert message.startswith(
            "folded variant of model 'clipped' still disagrees on offending sample 1: output 'logits': max |Δ| = "
        )
        assert "(rounding scale r = " in message and message.endswith("; it stays degraded (rebuild the entry)")
        stats = server.client.get("/v2/models/clipped/stats", headers=AUTH).json()["bnfold"]["clipped"]
        assert stats["folded_degraded"].startswith("mismatch on request ")
        assert (stats["equivalence"]["confirmed_defects"], stats["equivalence"]["rounding_explained"]) == (1, 0)
        assert server.client.get("/v2/models/clipped/versions/folded/ready").status_code == 503
        metrics = server.client.get("/metrics").text
        assert sample(metrics, "bnfold_reverifications_total", model="clipped", outcome="still_defective") == 1
        assert sample(metrics, "bnfold_equivalence_confirmed_defects_total", model="clipped") == 1
