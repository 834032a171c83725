"""The largest body a valid V2 infer request to a model can have, so oversized bodies are refused unread.

For a model whose inputs have fixed sizes past the batch axis, with B = BNFOLD_MAX_BATCH_SIZE and e_i the
elements per sample of input i:

    JSON body   ≤ B · Σ_i e_i · JSON_NUMBER_TEXT + HEADER_ALLOWANCE
    binary body ≤ B · Σ_i e_i · itemsize_i       + HEADER_ALLOWANCE

JSON_NUMBER_TEXT is the longest text one number takes (a float64 in shortest round-trip form is at most 24
characters, "-2.2250738585072014e-308", plus its ", " and a share of the brackets); HEADER_ALLOWANCE covers the
names, datatypes, shapes, parameters and id. A body over that bound cannot be a request the model accepts, so it
is a 413 before a byte of it is parsed. BNFOLD_MAX_BODY_BYTES stays the outer bound (and the only one for a
model that is not ready or has a dynamic axis past the batch).
"""

from __future__ import annotations

import math

from bnfold.service.dataplane import DataPlane
from bnfold.service.datatypes import numpy_dtype
from bnfold.service.edge import GLOBAL_LIMIT_FIX
from bnfold.service.repository import TensorSpec

JSON_NUMBER_TEXT = 32
HEADER_ALLOWANCE = 64 * 1024


class BodyLimits:
    """`infer_body_limit` remembered per model, variant of encoding and manifest (a reload computes it anew)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._known: dict[tuple[str, bool], tuple[object, tuple[int, str]]] = {}

    def limit(self, name: str, binary: bool) -> tuple[int, str]:
        model = self.plane.registry.models.get(name)
        manifest = model.manifest if model is not None and model.state == "ready" else None
        known = self._known.get((name, binary))
        if known is not None and manifest is not None and known[0] is manifest:
            return known[1]
        result = infer_body_limit(self.plane, name, binary)
        if manifest is not None:  # only models of the registry: as many keys as entries × 2
            self._known[name, binary] = (manifest, result)
        return result


def infer_body_limit(plane: DataPlane, name: str, binary: bool) -> tuple[int, str]:
    """The byte limit for an infer body to model `name` and the fix a 413 names."""
    outer = plane.settings.max_body_bytes
    model = plane.registry.models.get(name)
    if model is None or model.state != "ready" or model.manifest is None:
        return outer, GLOBAL_LIMIT_FIX
    per_sample = sample_bytes(model.manifest.inputs, binary)
    if per_sample is None:
        return outer, GLOBAL_LIMIT_FIX
    batch = plane.settings.max_batch_size
    limit = batch * per_sample + HEADER_ALLOWANCE
    if limit >= outer:
        return outer, GLOBAL_LIMIT_FIX
    encoding = "binary tensor data" if binary else "JSON"
    return limit, (
        f"no valid request to model {name!r} is larger ({batch} samples of at most {per_sample} bytes as "
        f"{encoding} + {HEADER_ALLOWANCE} bytes of header); send a smaller batch"
    )


def sample_bytes(specs: list[TensorSpec], binary: bool) -> int | None:
    """Most bytes one sample of all inputs takes; None when an axis past the batch is dynamic."""
    total = 0
    for spec in specs:
        rest = spec.shape[1:]
        if any(dim < 0 for dim in rest):
            return None
        width = numpy_dtype(spec.datatype).itemsize if binary else JSON_NUMBER_TEXT
        total += math.prod(rest) * width
    return total
