"""Fuzzing on a small budget: schemathesis requests (valid and invalid) against a live server find no 5xx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.fuzzing import fuzz
from bnfold.service.settings import Settings
from tests.service.builders import write_entry
from tests.service.server import running_server

EXAMPLES = 300


@pytest.mark.timeout(110)
def test_schemathesis_finds_no_server_error(tmp_path: Path, rng: np.random.Generator) -> None:
    write_entry(tmp_path, "digits", rng)
    write_entry(tmp_path, "regressor", rng, task="regression")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{")
    with running_server(Settings(repository=tmp_path, equivalence_policy="always")) as server:
        schema = server.client.get("/openapi.json").json()
        assert {"/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"} <= set(schema["paths"])
        result = fuzz(server.url, ["digits", "regressor", "broken"], EXAMPLES)
    print(f"fuzz: {result.requests} requests, by status {dict(sorted(result.by_status.items()))}")
    assert result.server_errors == []
    assert result.requests >= EXAMPLES // 2 and {200, 400, 404} <= set(result.by_status)


def test_non_string_input_name_is_a_400_not_a_500(tmp_path: Path, rng: np.random.Generator) -> None:
    """Found by the fuzzer: an input named by an object made the decoder raise TypeError (500)."""
    write_entry(tmp_path, "digits", rng)
    with running_server(Settings(repository=tmp_path)) as server:
        for name in ({}, [], 3, None):
            response = server.client.post("/v2/models/digits/infer", json={"inputs": [{"name": name}]})
            assert (response.status_code, response.json()) == (
                400,
                {"error": f"unexpected input {name!r}; the model's inputs are ['input']"},
            )
