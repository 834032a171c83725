"""The request body parser gives what the standard library's json.loads gives — value and error — although
orjson parses first: the bodies orjson refuses (NaN/Infinity tokens, UTF-16 bodies, lone surrogates) still
parse, and malformed JSON keeps the standard library's message. Integers beyond 64 bits become the nearest
float."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfold.service.errors import BadRequestError
from bnfold.service.v2_request import parse_json


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and the types compared too (1 is not 1.0)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), values, max_size=5))
def test_any_object_parses_as_the_standard_library_parses_it(document: dict[str, Any]) -> None:
    raw = json.dumps(document).encode()  # writes NaN / Infinity tokens and big integers, as Python clients do
    assert _same(parse_json(raw), json.loads(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"data": [NaN, Infinity, -Infinity, 1.5]}',
        '{"text": "caf\u00e9"}'.encode("utf-16"),
        b'{"lone": "\\ud800"}',
        b'{"twice": 1, "twice": 2}',
        b'{"deep": 1e400}',
    ],
    ids=["non_finite_tokens", "utf16", "lone_surrogate", "duplicate_key", "overflowing_float"],
)
def test_bodies_orjson_refuses_still_parse(raw: bytes) -> None:
    assert _same(parse_json(raw), json.loads(raw))


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 123456789012345678901234567890])
def test_an_integer_beyond_64_bits_is_the_nearest_float(number: int) -> None:
    parsed = parse_json(b'{"x": %d, "within": [%d, %d]}' % (number, 2**64 - 1, -(2**63)))
    assert parsed == {"x": float(number), "within": [2**64 - 1, -(2**63)]}
    assert type(parsed["x"]) is float and type(parsed["within"][0]) is int


@pytest.mark.parametrize("raw", [b'{"inputs": [', b"{'a': 1}", b"", b"[" * 100_000])
def test_malformed_json_keeps_the_standard_message(raw: bytes) -> None:
    try:
        json.loads(raw)
    except RecursionError as error:
        expected = str(error)
    except ValueError as error:
        expected = str(error)
    with pytest.raises(BadRequestError) as caught:
        parse_json(raw)
    assert str(caught.value) == (
        f"malformed JSON in request body ({expected}); send a JSON object (binary tensors need the "
        "Inference-Header-Content-Length header)"
    )
