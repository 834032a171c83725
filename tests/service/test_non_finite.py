"""Non-finite numbers while serving: inconclusive checks, and no bare NaN/Infinity on the wire.

Overflow: finite inputs near the float32 range overflow the unfolded graph (its Conv output, before the BN scales it
down) while the folded one stays finite. Such a check is *inconclusive*: reported, counted on its own, never a
mismatch and never a fail-over. A folded variant that goes non-finite where unfolded is finite is still a real
mismatch.

Strict JSON: no response body holds bare NaN/Infinity. A non-finite output goes binary when the client speaks the
binary extension, else 422; non-finite figures (an infinite max |Δ|) are null in JSON and left out of the V2
parameters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from bnfold.service.equivalence import compare
from bnfold.service.settings import Settings
from bnfold.service.v2_response import encode_json
from tests.service.builders import CHANNELS, Weights, build_graph, write_entry
from tests.service.oracle import binary_request, json_request, parse_binary_response, run_directly
from tests.service.server import RunningServer, running_server
from tests.service.test_failover import sample

PRESCALE = 1e30  # the planted defect of the 'blowup' model: input · 1e30 before a Conv with weights · 1e-30


def overflow_weights(rng: np.random.Generator) -> Weights:
    """Large positive conv weights and a BN with σ² ≈ 1e6: unfolded Conv overflows, folded W·γ/σ does not."""
    base = Weights.random(rng)
    return replace(
        base,
        conv_w=rng.uniform(30, 40, (CHANNELS, 1, 3, 3)),
        gamma=rng.uniform(0.5, 1.5, CHANNELS),
        var=rng.uniform(0.8e6, 1.2e6, CHANNELS),
    )


def prescaled_folded(weights: Weights) -> onnx.ModelProto:
    """The folded model computing Conv(x · 1e30, W' · 1e-30): right on [-1, 1], NaN once x · 1e30 overflows."""
    model = build_graph(weights, folded=True)
    graph = model.graph
    for index, init in enumerate(graph.initializer):
        if init.name == "conv_w":
            graph.initializer[index].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) / PRESCALE, "conv_w"))
    graph.initializer.append(numpy_helper.from_array(np.array(PRESCALE, dtype=np.float32), "prescale"))
    graph.node[0].input[0] = "scaled"
    graph.node.insert(0, helper.make_node("Mul", ["input", "prescale"], ["scaled"]))
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("non_finite")
    write_entry(root, "overflow", rng, weights=overflow_weights(rng))
    blowup = Weights.random(rng)
    write_entry(root, "blowup", rng, weights=blowup, folded_model=prescaled_folded(blowup))
    return root


@pytest.fixture
def server(repository: Path) -> Iterator[RunningServer]:
    """Every default request checked; fail-over on mismatch (the default)."""
    with running_server(Settings(repository=repository, equivalence_policy="always")) as running:
        yield running


def huge(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.5, 1.0, (2, 1, 8, 8)).astype(np.float32) * np.float32(1e37)


def strict_json(response: httpx.Response) -> Any:
    """The body parsed by a JSON parser that refuses NaN/Infinity tokens (as strict clients do)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"response body holds bare {token}: {response.text[:300]}")

    return json.loads(response.content, parse_constant=refuse)


def post(server: RunningServer, path: str, document: dict[str, Any]) -> httpx.Response:
    return server.client.post(path, content=json.dumps(document).encode())


def test_overflowing_reference_is_inconclusive_not_a_mismatch(
    server: RunningServer, repository: Path, rng: np.random.Generator
) -> None:
    x = huge(rng)
    entry = repository / "overflow"
    folded, unfolded = run_directly(entry, "folded", x), run_directly(entry, "unfolded", x)
    assert np.isfinite(folded).all() and not np.isfinite(unfolded).all()  # overflow in unfolded only

    response = post(server, "/v2/models/overflow/infer", json_request(x))
    assert response.status_code == 200, response.text
    document = strict_json(response)
    assert document["model_version"] == "folded"
    assert document["parameters"] == {
        "bnfold_variant": "folded",
        "bnfold_equivalence_checked": True,
        "bnfold_failed_over": False,
        "bnfold_inconclusive": True,
    }
    np.testing.assert_array_equal(np.asarray(document["outputs"][0]["data"], np.float32).reshape(2, 3), folded)

    predicted = strict_json(post(server, "/predict", {"model": "overflow", "variant": "both", "inputs": x.tolist()}))
    assert predicted["variant"] == "folded" and predicted["failed_over"] is False
    # Both variants' outputs: unfolded's holds Inf, which JSON cannot carry, so it is null.
    assert list(predicted["unfolded_outputs"].values()) == [None]
    np.testing.assert_array_equal(np.asarray(next(iter(predicted["folded_outputs"].values())), np.float32), folded)
    assert predicted["equivalence"] == {
        "agree": None,
        "inconclusive": True,
        "max_abs_diff": None,
        "max_rel_diff": None,
        "within_tolerance": None,
        "argmax_agree": None,
    }

    stats = strict_json(server.client.get("/v2/models/overflow/stats"))
    assert stats["folded_degraded"] is None and stats["default_version"] == "folded"
    equivalence = stats["equivalence"]
    assert (equivalence["checks"], equivalence["inconclusive"], equivalence["mismatches"]) == (2, 2, 0)
    assert equivalence["agreement_rate"] is None and equivalence["max_abs_diff_seen"] == 0.0
    assert "no finite reference" in equivalence["last_inconclusive"]
    assert server.client.get("/v2/models/overflow/versions/folded/ready").status_code == 200
    metrics = server.client.get("/metrics").text
    assert sample(metrics, "bnfold_equivalence_inconclusive_total", model="overflow") == 2
    assert sample(metrics, "bnfold_equivalence_checks_total", model="overflow") == 2
    assert sample(metrics, "bnfold_equivalence_mismatches_total", model="overflow") == 0
    assert sample(metrics, "bnfold_failovers_total", model="overflow") == 0
    assert sample(metrics, "bnfold_folded_degraded", model="overflow") == 0

    normal = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    parameters = strict_json(post(server, "/v2/models/overflow/infer", json_request(normal)))["parameters"]
    assert parameters["bnfold_variant"] == "folded" and parameters["bnfold_agree"] is True
    assert parameters["bnfold_inconclusive"] is False


def test_non_finite_folded_is_still_a_mismatch_and_its_figures_are_null(
    server: RunningServer, repository: Path, rng: np.random.Generator
) -> None:
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32) * np.float32(1e9)
    unfolded = run_directly(repository / "blowup", "unfolded", x)
    assert not np.isfinite(run_directly(repository / "blowup", "folded", x)).all() and np.isfinite(unfolded).all()

    response = post(server, "/v2/models/blowup/infer", json_request(x))
    assert response.status_code == 200, response.text
    document = strict_json(response)
    assert document["model_version"] == "unfolded"
    assert isinstance(document["parameters"].pop("bnfold_argmax_agree"), bool)  # arg-max of a NaN row: either
    assert document["parameters"] == {
        "bnfold_variant": "unfolded",
        "bnfold_equivalence_checked": True,
        "bnfold_failed_over": True,
        "bnfold_agree": False,
        "bnfold_inconclusive": False,
        "bnfold_within_tolerance": False,
    }  # max |Δ| is infinite: left out (a V2 parameter cannot be null)
    np.testing.assert_array_equal(np.asarray(document["outputs"][0]["data"], np.float32).reshape(2, 3), unfolded)

    stats = strict_json(server.client.get("/v2/models/blowup/stats"))
    assert stats["equivalence"]["mismatches"] == 1 and stats["equivalence"]["inconclusive"] == 0
    assert stats["equivalence"]["max_abs_diff_seen"] is None and stats["folded_degraded"] is not None
    metadata = strict_json(server.client.get("/v2/models/blowup"))
    assert metadata["equivalence"]["max_rel_diff_seen"] is None
    predicted = strict_json(post(server, "/predict", {"model": "blowup", "variant": "both", "inputs": x.tolist()}))
    assert predicted["equivalence"]["agree"] is False and predicted["equivalence"]["max_abs_diff"] is None
    assert sample(server.client.get("/metrics").text, "bnfold_equivalence_mismatches_total", model="blowup") == 2


def test_non_finite_outputs_go_binary_or_are_refused(
    server: RunningServer, repository: Path, rng: np.random.Generator
) -> None:
    x = huge(rng)
    expected = run_directly(repository / "overflow", "unfolded", x)
    flat = expected.reshape(-1)
    index = int((~np.isfinite(flat)).argmax())
    path = "/v2/models/overflow/versions/unfolded/infer"
    fix = "which JSON cannot carry; ask for it as binary tensor data (output parameters.binary_data: true, or "
    fix += "request parameters.binary_data_output: true)"

    refused = post(server, path, json_request(x))
    assert refused.status_code == 422
    where = f"output 'logits' holds {flat[index]} (first at flat index {index}), "
    assert strict_json(refused) == {"error": where + fix}
    explicit_json = post(server, path, json_request(x, parameters={"binary_data_output": False}))
    assert explicit_json.status_code == 422

    for body, headers in (binary_request(x), binary_request(x, outputs=[{"name": "logits"}])):
        response = server.client.post(path, content=body, headers=headers)
        assert response.status_code == 200, response.text
        length = int(response.headers["inference-header-content-length"])
        strict_json(httpx.Response(200, content=response.content[:length]))
        document, arrays = parse_binary_response(response.content, length)
        assert document["outputs"][0]["parameters"] == {"binary_data_size": expected.nbytes}
        assert arrays["logits"].tobytes() == expected.tobytes()  # NaN and ±Inf bit for bit

    predicted = post(server, "/predict", {"model": "overflow", "variant": "unfolded", "inputs": x.tolist()})
    assert predicted.status_code == 422
    assert strict_json(predicted)["error"].startswith("output 'logits' holds ")
    assert "use POST /v2/models/overflow/infer and ask for it as binary tensor data" in predicted.text
    metrics = server.client.get("/metrics").text
    assert sample(metrics, "bnfold_requests_total", model="overflow", variant="unfolded", status="422") == 3


def test_compare_rule_for_non_finite_values() -> None:
    finite = {"y": np.array([[1.0, 2.0]], np.float32)}
    nan_ref = {"y": np.array([[np.nan, 2.0]], np.float32)}
    inf_ref = {"y": np.array([[np.inf, 2.0]], np.float32)}
    for reference in (nan_ref, inf_ref):
        result = compare(finite, reference, 1e-5, 1e-4, classifier=True)
        assert result.inconclusive and not result.agree and not result.mismatch
        assert result.to_json()["agree"] is None and result.to_json()["inconclusive"] is True
        assert "no finite reference" in result.describe() and "index (0, 0)" in result.describe()
        same = compare(reference, reference, 1e-5, 1e-4, classifier=True)  # identical values: no error there
        assert same.agree and not same.inconclusive and not same.mismatch
        assert same.to_json() == {
            "agree": True,
            "inconclusive": False,
            "max_abs_diff": 0.0,
            "max_rel_diff": 0.0,
            "within_tolerance": True,
            "argmax_agree": True,
        }
    broken = compare(nan_ref, finite, 1e-5, 1e-4, classifier=False)
    assert broken.mismatch and not broken.inconclusive and broken.max_abs == float("inf")
    assert broken.to_json()["max_abs_diff"] is None and broken.to_json()["within_tolerance"] is False
    json.dumps(broken.to_json(), allow_nan=False)


def test_documents_with_non_finite_numbers_are_strict_json() -> None:
    """Metadata may hold a NaN read from a model.json: sent as null, never as a bare NaN token."""
    document = {"metrics": {"accuracy": float("nan"), "curve": [1.5, float("inf"), -float("inf")]}, "ok": 2.0}
    assert encode_json(document) == b'{"metrics":{"accuracy":null,"curve":[1.5,null,null]},"ok":2.0}'
    assert encode_json({"a": 1.0}) == b'{"a":1.0}'
