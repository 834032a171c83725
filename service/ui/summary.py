"""The one JSON document the dashboard polls: every model's state, BN counts and live figures."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from bnfold.service.dataplane import DataPlane
from bnfold.service.model import ServedModel
from bnfold.service.ui.report_page import fate_counts
from bnfold.service.ui.traffic import Key, TrafficWindow

POLL_MS = 2000
DRAWABLE_SHAPE = (-1, 1, 8, 8)  # the digits models: one 8×8 grey image in [0, 1]


def dashboard_summary(plane: DataPlane, traffic: TrafficWindow) -> dict[str, Any]:
    """{"loaded", "poll_ms", "window_s", "models": [...]} (see docs/service.md, "The dashboard")."""
    figures = traffic.figures()
    failovers = counter_by_model(plane.metrics.failovers)
    models = [_model_summary(model, figures, failovers.get(model.name, 0)) for model in plane.registry.models.values()]
    return {"loaded": plane.registry.loaded, "poll_ms": POLL_MS, "window_s": traffic.window_s, "models": models}


def counter_by_model(counter: Counter) -> dict[str, int]:
    """The `_total` value of a counter labelled by model only."""
    return {
        sample.labels["model"]: int(sample.value)
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def _model_summary(model: ServedModel, figures: dict[Key, dict[str, Any]], failovers: int) -> dict[str, Any]:
    manifest = model.manifest
    summary: dict[str, Any] = {
        "name": model.name,
        "state": model.state,
        "reason": model.reason,
        "report_url": f"/ui/models/{model.name}/report",
        "default_version": "unfolded" if model.folded_degraded else "folded",
        "folded_degraded": model.folded_degraded,
        "failovers": failovers,
        "equivalence": model.stats.to_json(),
        "traffic": {variant: figures.get((model.name, variant)) for variant in ("folded", "unfolded")},
    }
    if manifest is None:
        return summary
    report = manifest.fold_report or {}
    summary.update(
        task=manifest.task,
        inputs=[spec.model_dump() for spec in manifest.inputs],
        outputs=[spec.model_dump() for spec in manifest.outputs],
        batchnorm_nodes={name: variant.batchnorm_nodes for name, variant in manifest.variants.items()},
        fold_summary=report.get("summary"),
        batchnorms=fate_counts(report.get("entries", [])),
        drawable=len(manifest.inputs) == 1 and manifest.inputs[0].shape == DRAWABLE_SHAPE,
    )
    return summary
