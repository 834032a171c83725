"""Load a repository entry into a ServedModel: files, sessions, signature, and the calibration gate."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from bnfold.service.batching import BatchingRunner
from bnfold.service.equivalence import Equivalence, compare
from bnfold.service.metrics import ServiceMetrics
from bnfold.service.model import Registry, ServedModel, Variant
from bnfold.service.repository import Entry, EntryError, load_calibration, read_entry
from bnfold.service.runtime import Runner, SessionConfig, SessionRunner, Tensors, check_signature, open_session
from bnfold.service.settings import Settings
from bnfold.service.usage import VersionUsage

log = logging.getLogger("bnfold.service")


def session_configs(settings: Settings, session_count: int) -> dict[str, SessionConfig]:
    """Pinned options per variant; the unfolded one never lets onnxruntime fuse BatchNormalization."""
    threads = settings.threads_per_session(session_count)
    return {
        "folded": SessionConfig(threads, settings.inter_op_threads, settings.graph_optimization),
        "unfolded": SessionConfig(threads, settings.inter_op_threads, "disable"),
    }


@dataclass
class RunnerFactory:
    """Wraps each variant's SessionRunner: a process-wide gate on concurrent onnxruntime runs (cores //
    intra-op threads, so sessions never oversubscribe the cores), and the dynamic batcher when enabled."""

    settings: Settings
    concurrent_runs: int
    metrics: ServiceMetrics | None = None
    gate: threading.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.gate = threading.Semaphore(self.concurrent_runs)

    def session_runner(self, session: ort.InferenceSession) -> SessionRunner:
        return SessionRunner(session, self.gate, self.settings.inline_run_budget_ms / 1000)

    def serving_runner(self, model: str, variant: str, runner: SessionRunner, usage: VersionUsage) -> Runner:
        """The runner requests call; it records the version's statistics into `usage`."""
        if not self.settings.dynamic_batching:
            runner.usage = usage
            return runner
        metrics = self.metrics

        def observe(requests: int, samples: int) -> None:
            if metrics is not None:
                metrics.observe_batch(model, variant, requests, samples)

        settings = self.settings
        batching = BatchingRunner(
            runner, settings.max_batch_size, settings.max_batch_delay_ms, self.concurrent_runs, observe
        )
        batching.usage = usage
        return batching


@dataclass(frozen=True)
class LoadContext:
    """What every load of a process shares: session options and the runner factory (one process-wide gate)."""

    configs: dict[str, SessionConfig]
    factory: RunnerFactory

    @classmethod
    def for_models(cls, settings: Settings, models: int, metrics: ServiceMetrics | None = None) -> LoadContext:
        """Options sized for `models` models (two sessions each)."""
        session_count = 2 * models
        configs = session_configs(settings, session_count)
        return cls(configs, RunnerFactory(settings, settings.concurrent_runs(session_count), metrics))


def load_model(name: str, directory: Path, context: LoadContext) -> ServedModel:
    """A new ServedModel loaded from `directory`: ready, or unavailable with the reason (blocking)."""
    model = ServedModel(name)
    load_into(model, directory, context.configs, context.factory)
    return model


def load_all(registry: Registry, settings: Settings, metrics: ServiceMetrics | None = None) -> None:
    """Load every model of the registry in turn (blocking; run it in a worker thread)."""
    context = LoadContext.for_models(settings, len(registry.models), metrics)
    configs, factory = context.configs, context.factory
    for model in registry.models.values():
        load_into(model, settings.repository / model.name, configs, factory)
    registry.loaded = True
    ready = sum(model.state == "ready" for model in registry.models.values())
    log.info("loading ended: %d of %d models ready", ready, len(registry.models))


def load_into(model: ServedModel, directory: Path, configs: dict[str, SessionConfig], factory: RunnerFactory) -> None:
    """Fill `model` from its directory; on any refusal it becomes unavailable with the reason logged."""
    try:
        entry = read_entry(directory)
        model.manifest = entry.manifest
        runners = _open_runners(entry, configs, factory)
        model.calibration_batch = load_calibration(entry, factory.settings.calibration_limits())
        model.calibration = _calibrate(entry, runners, model.calibration_batch)
        model.variants = {
            name: Variant(
                name,
                factory.serving_runner(model.name, name, runner, model.usage[name]),
                configs[name],
                entry.manifest.variants[name].batchnorm_nodes,
            )
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


def _open_runners(entry: Entry, configs: dict[str, SessionConfig], factory: RunnerFactory) -> dict[str, SessionRunner]:
    runners = {}
    for name, config in configs.items():
        session = open_session(entry.variant_path(name), config)
        check_signature(session, entry.manifest.inputs, entry.manifest.outputs)
        runners[name] = factory.session_runner(session)
    return runners


def _calibrate(entry: Entry, runners: dict[str, SessionRunner], batch: Tensors) -> Equivalence:
    """Run both variants on the calibration batch; EntryError unless they agree within tolerance."""
    outputs = {}
    for name, runner in runners.items():
        try:
            outputs[name] = runner.timed_run(batch)
        except Exception as error:  # onnxruntime's runtime failures
            raise EntryError(f"{name} variant fails on the calibration batch: {error}") from None
    tolerance = entry.manifest.tolerance
    classifier = entry.manifest.task == "classification"
    result = compare(outputs["folded"], outputs["unfolded"], tolerance.atol, tolerance.rtol, classifier)
    if result.inconclusive:
        raise EntryError(
            f"cannot certify folded against unfolded on the calibration batch: {result.describe()}; "
            "rebuild the entry with calibration inputs in the model's range"
        )
    if not result.agree:
        raise EntryError(
            f"folded and unfolded disagree on the calibration batch: {result.describe()} "
            f"> atol {tolerance.atol:g} + rtol {tolerance.rtol:g}·scale; rebuild the entry"
        )
    return result
