"""encode_json (orjson) writes the values the standard library writes, and strict JSON always."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfold.service.v2_response import encode_json

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite_floats | st.text()
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5), max_leaves=30
)


def stdlib(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def strict_loads(raw: bytes) -> object:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(raw, parse_constant=refuse)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(documents)
def test_round_trips_to_the_same_values_as_the_standard_library(document: object) -> None:
    """Equal after parsing, float for float (the text differs only in exponents: 1e-7, not 1e-07)."""
    encoded = encode_json(document)
    assert strict_loads(encoded) == document == json.loads(stdlib(document))


def test_float32_outputs_keep_their_float64_digits() -> None:
    values = np.array([0.01773497462272644, 1 / 3, 1e-8, 123456.7], np.float32)
    data = values.tolist()
    assert np.array_equal(np.asarray(json.loads(encode_json({"data": data}))["data"], np.float32), values)


def test_non_finite_floats_become_null_and_huge_integers_still_encode() -> None:
    assert encode_json({"a": math.nan, "b": [math.inf, -math.inf], "c": 1.5}) == b'{"a":null,"b":[null,null],"c":1.5}'
    assert encode_json({"big": 2**70, "x": math.nan}) == b'{"big":1180591620717411303424,"x":null}'
    assert encode_json({1: "int key"}) == b'{"1":"int key"}'
