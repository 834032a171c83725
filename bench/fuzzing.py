"""Schemathesis against the service's own OpenAPI schema, over HTTP: every operation, valid and invalid data,
path parameters that hit real models and versions as well as random ones.

Shared by tests/load/test_fuzz.py (small budget) and bench/fuzz.py (long run).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok

MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@dataclass
class FuzzResult:
    """Requests sent, by status code; the server errors (≥ 500) with what was sent."""

    by_status: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.by_status.values())


def _path_choices(path: str, models: list[str]) -> Iterator[dict[str, str] | None]:
    """Path parameters to pin: real models and versions, and None (schemathesis draws them)."""
    yield None
    if "{model}" not in path:
        return
    for model in models:
        if "{version}" in path:
            yield from ({"model": model, "version": version} for version in ("folded", "unfolded"))
        else:
            yield {"model": model}


def case_strategy(url: str, models: list[str]) -> st.SearchStrategy[schemathesis.Case]:
    """Cases for every operation of GET {url}/openapi.json, positive and negative, pinned and free paths."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    strategies = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            raise RuntimeError(f"the service's OpenAPI schema has an invalid operation: {result.err()}")
        operation = result.ok()
        for pinned in _path_choices(operation.path, models):
            strategies += [operation.as_strategy(mode, path_parameters=pinned) for mode in MODES]
    return st.one_of(strategies)


def designed_unavailable(status: int, text: str) -> bool:
    """The one 5xx the service answers on purpose: 503 for a model refused at load (or a degraded folded
    version), with its reason. Everything else ≥ 500 is a finding."""
    return status == 503 and (
        (text.startswith('{"error":"model ') and " is not ready: " in text) or " is degraded: " in text
    )


def fuzz(url: str, models: list[str], examples: int) -> FuzzResult:
    """Send `examples` generated requests; count statuses and record every 5xx."""
    outcome = FuzzResult()

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=case_strategy(url, models))
    def send(case: schemathesis.Case) -> None:
        response = case.call(base_url=url)
        outcome.by_status[response.status_code] = outcome.by_status.get(response.status_code, 0) + 1
        if response.status_code >= 500 and not designed_unavailable(response.status_code, response.text):
            sent = f"{case.method} {case.formatted_path} {case.body!r}"[:400]
            outcome.server_errors.append(f"{sent} -> {response.status_code}: {response.text[:300]}")

    send()
    return outcome
