"""JSON documents describing the server and its models: v2 metadata, config, and agreement stats."""

from __future__ import annotations

from typing import Any

from bnfold.service.model import ServedModel
from bnfold.service.repository import VARIANTS, TensorSpec

SERVER_NAME = "bnfold"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
PLATFORM = "onnxruntime_onnx"


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def _tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def model_metadata(model: ServedModel) -> dict[str, Any]:
    """V2 model metadata ({name, versions, platform, inputs, outputs}) plus bnfold's state and provenance."""
    manifest = model.manifest
    document: dict[str, Any] = {
        "name": model.name,
        "versions": list(VARIANTS),
        "platform": PLATFORM,
        "inputs": _tensors(manifest.inputs) if manifest else [],
        "outputs": _tensors(manifest.outputs) if manifest else [],
        "state": model.state,
        "reason": model.reason,
        "default_version": model.default_version,
        "folded_degraded": model.folded_degraded,
        "variants": {
            name: {"session_options": v.config.to_json(), "batchnorm_nodes": v.batchnorm_nodes}
            for name, v in model.variants.items()
        },
        "calibration": model.calibration.to_json() if model.calibration else None,
        "equivalence": model.stats.to_json(),
    }
    if manifest:
        document |= _manifest_details(manifest.model_dump())
    return document


def _manifest_details(raw: dict[str, Any]) -> dict[str, Any]:
    report = raw.get("fold_report") or {}
    return {
        "task": raw["task"],
        "tolerance": raw["tolerance"],
        "fold_summary": report.get("summary"),
        "provenance": raw.get("provenance"),
        "metrics": raw.get("metrics"),
    }


def model_config(model: ServedModel, max_batch_size: int) -> dict[str, Any]:
    """A Triton-style config so load generators of the ecosystem batch correctly (dims without axis 0)."""
    manifest = model.manifest

    def entries(specs: list[TensorSpec]) -> list[dict[str, Any]]:
        return [{"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": list(s.shape[1:])} for s in specs]

    return {
        "name": model.name,
        "platform": PLATFORM,
        "max_batch_size": max_batch_size,
        "input": entries(manifest.inputs) if manifest else [],
        "output": entries(manifest.outputs) if manifest else [],
    }


def agreement_stats(model: ServedModel) -> dict[str, Any]:
    """Running agreement figures of the checks made while serving (the `bnfold` part of /stats)."""
    return {
        "state": model.state,
        "default_version": model.default_version,
        "folded_degraded": model.folded_degraded,
        "calibration": model.calibration.to_json() if model.calibration else None,
        "equivalence": model.stats.to_json(),
    }


def model_statistics(models: list[ServedModel], version: str | None = None) -> dict[str, Any]:
    """Triton's `$stats_model_response` for `models` (every version, or only `version`), plus bnfold's
    agreement figures by model name under `bnfold`."""
    versions = VARIANTS if version is None else (version,)
    return {
        "model_stats": [model.usage[name].to_triton(model.name, name) for model in models for name in versions],
        "bnfold": {model.name: agreement_stats(model) for model in models},
    }
