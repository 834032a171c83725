"""Request handlers of the two inference APIs (v2 infer, simple predict) on top of the data plane.

Bodies arrive as raw bytes (parsed once here); the results go back as bytes or plain dicts. No HTTP here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from bnfold.service.dataplane import DataPlane, Outcome, new_request_id
from bnfold.service.errors import BadRequestError, ServiceError
from bnfold.service.repository import VARIANTS, TensorSpec
from bnfold.service.runtime import rows_of
from bnfold.service.usage import VersionUsage
from bnfold.service.v2_request import Limits, decode_inputs, parse_json, split_body
from bnfold.service.v2_response import BINARY_FIX, OutputRequest, encode, requested_outputs, require_finite

PREDICT_VARIANTS = ("folded", "unfolded", "both")
T = TypeVar("T")


def _limits(plane: DataPlane) -> Limits:
    return Limits(plane.settings.max_batch_size, plane.settings.allow_non_finite)


async def infer_v2(
    plane: DataPlane, name: str, version: str | None, body: bytes, binary_header: str | None
) -> tuple[bytes, int | None]:
    """POST /v2/models/{name}[/versions/{version}]/infer: body and JSON header length (binary responses)."""
    return await run_v2(
        plane, name, version, lambda: split_body(body, binary_header), binary_header is not None, encode
    )


Read = Callable[[], tuple[dict[str, Any], memoryview]]
Respond = Callable[[dict[str, Any], dict[str, np.ndarray], OutputRequest], T]


async def run_v2(
    plane: DataPlane, name: str, version: str | None, read: Read, binary_request: bool, respond: Respond[T]
) -> T:
    """One V2 infer request of any transport: `read()` gives its V2 document and binary tail, `respond(header,
    outputs, wanted)` encodes the answer (header: model_name, model_version, id, parameters); counted once."""
    started, begin, label = time.perf_counter(), time.perf_counter_ns(), plane.model_label(name)
    variant = "default" if version is None else version if version in VARIANTS else "<unknown>"
    usage: VersionUsage | None = None  # statistics of the version addressed, once the model is ready
    try:
        model = plane.registry.get(name)
        model.check_version(version)
        manifest = model.require_ready()
        usage = model.usage[version or model.default_version]
        document, tail = read()
        request_id = _request_id(document)
        inputs = decode_inputs(document, tail, manifest.inputs, _limits(plane))
        wanted = requested_outputs(document, [spec.name for spec in manifest.outputs], binary_request)
        decoded = time.perf_counter_ns()
        outcome = await plane.execute(model, version, inputs, request_id, plane.wants_check())
        ran, variant = time.perf_counter_ns(), outcome.variant
        header: dict[str, Any] = {"model_name": name, "model_version": outcome.variant}
        if request_id is not None:
            header["id"] = request_id
        header["parameters"] = _v2_parameters(outcome)
        result = respond(header, outcome.outputs, wanted)
    except ServiceError as error:
        plane.observe(label, variant, error.status, None)
        if usage is not None:
            usage.record_failure(time.perf_counter_ns() - begin)
        raise
    plane.observe(label, variant, 200, started)
    end = time.perf_counter_ns()
    model.usage[variant].record_success(rows_of(inputs), end - begin, decoded - begin, end - ran)
    return result


def _request_id(document: dict[str, Any]) -> str | None:
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError(f"'id' must be a string, got {type(request_id).__name__}")
    return request_id


def _v2_parameters(outcome: Outcome) -> dict[str, Any]:
    """Flat scalar parameters (as the protocol allows) describing the variant and any check."""
    parameters: dict[str, Any] = {
        "bnfold_variant": outcome.variant,
        "bnfold_equivalence_checked": outcome.equivalence is not None,
        "bnfold_failed_over": outcome.failed_over,
    }
    if outcome.equivalence is not None:
        for key, value in outcome.equivalence.to_json().items():
            if value is not None:
                parameters[f"bnfold_{key}"] = value
    return parameters


async def predict(plane: DataPlane, body: bytes) -> dict[str, Any]:
    """POST /predict: {"model", "inputs", "variant"} -> outputs, variant, timings, equivalence."""
    started, begin, label, variant = time.perf_counter(), time.perf_counter_ns(), "<unknown>", "default"
    usage: VersionUsage | None = None  # statistics of the version addressed, once the model is ready
    try:
        document = parse_json(body)
        model = plane.registry.get(_string_field(document, "model"))
        label = model.name
        manifest = model.require_ready()
        variant = _predict_variant(document)
        version = None if variant in ("both", "default") else variant
        usage = model.usage[version or model.default_version]
        items = _predict_items(document.get("inputs"), manifest.inputs)
        inputs = decode_inputs({"inputs": items}, memoryview(b""), manifest.inputs, _limits(plane))
        request_id = _request_id(document) or new_request_id()
        check = variant == "both" or (variant == "default" and plane.wants_check())
        decoded = time.perf_counter_ns()
        outcome = await plane.execute(model, version, inputs, request_id, check)
        ran, variant = time.perf_counter_ns(), outcome.variant
        for key, value in outcome.outputs.items():
            require_finite(key, np.asarray(value), f"use POST /v2/models/{model.name}/infer and {BINARY_FIX}")
        response = _predict_response(model.name, request_id, outcome)
    except ServiceError as error:
        plane.observe(label, variant, error.status, None)
        if usage is not None:
            usage.record_failure(time.perf_counter_ns() - begin)
        raise
    plane.observe(label, variant, 200, started)
    if document.get("variant") == "both":
        response.update(both_variant_outputs(outcome))
    end = time.perf_counter_ns()
    model.usage[variant].record_success(rows_of(inputs), end - begin, decoded - begin, end - ran)
    return response


def both_variant_outputs(outcome: Outcome) -> dict[str, Any]:
    """`folded_outputs` and `unfolded_outputs` of a checked /predict; an output holding NaN/Inf is null (JSON
    cannot carry it; the V2 endpoint returns it as binary tensor data)."""
    return {
        f"{variant}_outputs": {
            key: np.asarray(value).tolist() if np.isfinite(np.asarray(value)).all() else None
            for key, value in tensors.items()
        }
        for variant, tensors in outcome.by_variant.items()
    }


def _string_field(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise BadRequestError(f'\'{key}\' must be a string naming the model, like {{"{key}": "digits_resnet"}}')
    return value


def _predict_variant(document: dict[str, Any]) -> str:
    variant = document.get("variant", "default")
    if variant != "default" and variant not in PREDICT_VARIANTS:
        raise BadRequestError(f"'variant' is {variant!r}; use one of {', '.join(PREDICT_VARIANTS)}")
    return str(variant)


def _predict_items(data: Any, specs: list[TensorSpec]) -> list[dict[str, Any]]:
    """V2-style input items from a nested list (single-input models) or {name: nested list}."""
    if not isinstance(data, dict):
        if len(specs) != 1:
            raise BadRequestError(f"'inputs' must map each input name to a nested list: {[s.name for s in specs]}")
        data = {specs[0].name: data}
    by_name = {spec.name: spec for spec in specs}
    return [
        {
            "name": name,
            "datatype": by_name[name].datatype if name in by_name else None,
            "shape": _nested_shape(value),
            "data": value,
        }
        for name, value in data.items()
    ]


def _nested_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _predict_response(name: str, request_id: str, outcome: Outcome) -> dict[str, Any]:
    return {
        "model": name,
        "id": request_id,
        "variant": outcome.variant,
        "outputs": {key: np.asarray(value).tolist() for key, value in outcome.outputs.items()},
        "timings_ms": {key: round(seconds * 1000, 3) for key, seconds in outcome.seconds.items()},
        "equivalence": outcome.equivalence.to_json() if outcome.equivalence else None,
        "failed_over": outcome.failed_over,
    }
