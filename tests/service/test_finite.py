"""The sum-first finiteness test against numpy's elementwise one, on arrays that hold NaN/±Inf at random
places and on finite arrays whose sum overflows (the case the sum alone would get wrong)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bnfold.service.finite import non_finite_at, non_finite_in_list


def _reference(array: np.ndarray) -> int | None:
    if array.dtype.kind != "f":
        return None
    bad = np.flatnonzero(~np.isfinite(array.reshape(-1)))
    return int(bad[0]) if bad.size else None


FLOATS = st.sampled_from([np.float16, np.float32, np.float64])
SPECIALS = st.sampled_from([np.nan, np.inf, -np.inf, "max", "-max", 0.5])


@settings(max_examples=300, deadline=None)
@given(
    dtype=FLOATS,
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    seed=st.integers(0, 2**32 - 1),
    specials=st.lists(st.tuples(st.integers(0, 10_000), SPECIALS), max_size=4),
)
def test_the_first_non_finite_index_matches_numpy(
    dtype: type, shape: tuple[int, ...], seed: int, specials: list[tuple[int, object]]
) -> None:
    array = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    flat = array.reshape(-1)
    for position, value in specials:
        if flat.size:
            limit = float(np.finfo(dtype).max)
            flat[position % flat.size] = {"max": limit, "-max": -limit}.get(value, value)  # type: ignore[call-overload]
    assert non_finite_at(array) == _reference(array)
    assert non_finite_in_list(array.reshape(-1).tolist(), array) == _reference(array)


def test_finite_values_whose_sum_overflows_are_finite() -> None:
    for dtype in (np.float16, np.float32, np.float64):
        array = np.full(8, np.finfo(dtype).max, dtype)
        assert non_finite_at(array) is None
    huge = np.full(4, np.finfo(np.float64).max)
    assert sum(huge.tolist()) == float("inf")  # the sum alone would say "not finite"
    assert non_finite_in_list(huge.tolist(), huge) is None


def test_integer_and_bool_tensors_have_no_non_finite_values() -> None:
    assert non_finite_at(np.arange(5)) is None
    assert non_finite_in_list([True, False], np.array([True, False])) is None
