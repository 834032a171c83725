"""Re-verification: clear a degraded folded variant without a restart, on evidence.

POST /v2/models/{m}/reverify runs both variants on the calibration batch and on every offending sample kept
when a defect was confirmed (up to 16), and judges each like a serving-time check: the contract's rule, then
the rounding referee — always, even with BNFOLD_EQUIVALENCE_REFEREE=false, since clearing needs that
evidence. When none is a confirmed defect, folded is served again (degraded cleared, offending samples
dropped); otherwise it stays degraded and the answer is 409 naming the sample that still disagrees.
"""

from __future__ import annotations

import logging
from typing import Any

from bnfold.service.dataplane import DataPlane
from bnfold.service.errors import ConflictError
from bnfold.service.model import ServedModel
from bnfold.service.runtime import Tensors

log = logging.getLogger("bnfold.service")


async def reverify(plane: DataPlane, model: ServedModel) -> dict[str, Any]:
    """Re-verify folded against unfolded; the JSON answer, or ConflictError while a defect remains."""
    model.require_ready()
    batches: list[tuple[str, Tensors]] = [("the calibration batch", model.calibration_batch or {})]
    batches += [(f"offending sample {index}", sample) for index, sample in enumerate(model.offending, 1)]
    for label, batch in batches:
        folded, unfolded = await plane.run_both(model, batch)
        result = await plane.judge(model, batch, folded, unfolded, referee_on=True)
        if result.defect:
            plane.metrics.reverifications.labels(model.name, "still_defective").inc()
            raise ConflictError(
                f"folded variant of model {model.name!r} still disagrees on {label}: {result.describe()}; "
                "it stays degraded (rebuild the entry)"
            )
    was_degraded = model.folded_degraded is not None
    model.folded_degraded, model.offending = None, []
    model.stats.reverifications += 1
    plane.metrics.degraded.labels(model.name).set(0)
    plane.metrics.reverifications.labels(model.name, "verified").inc()
    if was_degraded:
        log.warning("model %r: folded variant re-verified, default requests go to folded again", model.name)
    return {"name": model.name, "verified": [label for label, _ in batches], "cleared": was_degraded}
