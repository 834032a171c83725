"""The load-time calibration check refuses to certify an entry whose calibration batch overflows unfolded:
an INCONCLUSIVE verdict makes the model unavailable, with the output, the index and the fix in the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnfold.service.settings import Settings
from tests.service.builders import write_entry
from tests.service.oracle import run_directly
from tests.service.server import running_server
from tests.service.test_non_finite import huge, overflow_weights


def test_inconclusive_calibration_is_refused_at_load(tmp_path: Path, rng: np.random.Generator) -> None:
    write_entry(tmp_path, "overflow", rng, weights=overflow_weights(rng))
    write_entry(tmp_path, "healthy", rng)
    batch = huge(rng)
    np.savez(tmp_path / "overflow" / "calibration.npz", input=batch)  # calibration has no digest in model.json
    unfolded = run_directly(tmp_path / "overflow", "unfolded", batch)
    folded = run_directly(tmp_path / "overflow", "folded", batch)
    assert np.isfinite(folded).all() and not np.isfinite(unfolded).all()
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(unfolded))[0])

    with running_server(Settings(repository=tmp_path)) as server:
        states = {model["name"]: model for model in server.client.get("/v2/models").json()["models"]}
    assert states["healthy"]["state"] == "ready"
    assert states["overflow"]["state"] == "unavailable"
    assert states["overflow"]["reason"] == (
        "cannot certify folded against unfolded on the calibration batch: inconclusive: unfolded output "
        f"'logits' at index {first}: the reference is not finite there, so there is no finite reference to judge "
        "the candidate against; rebuild the entry with calibration inputs in the model's range"
    )
