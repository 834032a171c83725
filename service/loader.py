"""Load a repository entry into a ServedModel: files, sessions, signature, and the calibration gate."""

from __future__ import annotations

import logging
from pathlib import Path

from service.equivalence import Equivalence, compare
from service.model import Registry, ServedModel, Variant
from service.repository import Entry, EntryError, load_calibration, read_entry
from service.runtime import SessionConfig, SessionRunner, check_signature, open_session
from service.settings import Settings

log = logging.getLogger("bnfold.service")


def session_configs(settings: Settings, session_count: int) -> dict[str, SessionConfig]:
    """Pinned options per variant; the unfolded one never lets onnxruntime fuse BatchNormalization."""
    threads = settings.threads_per_session(session_count)
    return {
        "folded": SessionConfig(threads, settings.inter_op_threads, settings.graph_optimization),
        "unfolded": SessionConfig(threads, settings.inter_op_threads, "disable"),
    }


def load_all(registry: Registry, settings: Settings) -> None:
    """Load every model of the registry in turn (blocking; run it in a worker thread)."""
    configs = session_configs(settings, 2 * len(registry.models))
    for model in registry.models.values():
        load_into(model, settings.repository / model.name, configs)
    registry.loaded = True
    ready = sum(model.state == "ready" for model in registry.models.values())
    log.info("loading ended: %d of %d models ready", ready, len(registry.models))


def load_into(model: ServedModel, directory: Path, configs: dict[str, SessionConfig]) -> None:
    """Fill `model` from its directory; on any refusal it becomes unavailable with the reason logged."""
    try:
        entry = read_entry(directory)
        model.manifest = entry.manifest
        runners = _open_runners(entry, configs)
        model.calibration = _calibrate(entry, runners)
        model.variants = {
            name: Variant(name, runner, configs[name], entry.manifest.variants[name].batchnorm_nodes)
            for name, runner in runners.items()
        }
    except EntryError as error:
        model.state, model.reason = "unavailable", str(error)
        log.error("model %r not ready: %s", model.name, error)
        return
    except Exception as error:  # a bug or an unforeseen file problem must not stop the other models
        model.state, model.reason = "unavailable", f"unexpected error while loading: {error!r}"
        log.exception("model %r not ready", model.name)
        return
    model.state = "ready"
    log.info("model %r ready (calibration %s)", model.name, model.calibration.describe())


def _open_runners(entry: Entry, configs: dict[str, SessionConfig]) -> dict[str, SessionRunner]:
    runners = {}
    for name, config in configs.items():
        session = open_session(entry.variant_path(name), config)
        check_signature(session, entry.manifest.inputs, entry.manifest.outputs)
        runners[name] = SessionRunner(session)
    return runners


def _calibrate(entry: Entry, runners: dict[str, SessionRunner]) -> Equivalence:
    """Run both variants on the calibration batch; EntryError unless they agree within tolerance."""
    batch = load_calibration(entry)
    outputs = {}
    for name, runner in runners.items():
        try:
            outputs[name] = runner.run_sync(batch)
        except Exception as error:  # onnxruntime's runtime failures
            raise EntryError(f"{name} variant fails on the calibration batch: {error}") from None
    tolerance = entry.manifest.tolerance
    classifier = entry.manifest.task == "classification"
    result = compare(outputs["folded"], outputs["unfolded"], tolerance.atol, tolerance.rtol, classifier)
    if not result.agree:
        raise EntryError(
            f"folded and unfolded disagree on the calibration batch: {result.describe()} "
            f"> atol {tolerance.atol:g} + rtol {tolerance.rtol:g}·scale; rebuild the entry"
        )
    return result
