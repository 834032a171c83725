"""Model control (Triton's model-repository extension), transport-agnostic: index, load, unload, polling.

The HTTP routes (service/repository_routes.py) and any other transport call these coroutines on the event
loop's thread and map `ServiceError`s to their own status codes:

    RepositoryControl.index(ready_only=False) -> list[IndexEntry]    RepositoryIndex
    await RepositoryControl.load(name)        -> ServedModel (ready)  RepositoryModelLoad   (BadRequestError /
    await RepositoryControl.unload(name)      -> None                 RepositoryModelUnload  NotFoundError)

A load reads the entry again (manifest, sha256 digests, sessions, calibration gate) in a thread of its own,
never on the event loop and never in the pool that runs onnxruntime; one that takes longer than
`load_timeout_seconds` is abandoned with that reason. Only a model that passed every check is swapped in, by
replacing the registry's entry whole: requests in flight finish on the model they resolved, new ones get
the new model, with fresh fail-over state, agreement figures and statistics. A failed load leaves the
previous model serving (the failure is its index reason) and raises `BadRequestError` with the reason.
Loads of one name are serialised; loads of different names run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from bnfold.contract.layout import is_valid_name
from bnfold.service.dataplane import DataPlane
from bnfold.service.errors import BadRequestError, NotFoundError
from bnfold.service.loader import LoadContext, load_model
from bnfold.service.model import ServedModel
from bnfold.service.repository import VARIANTS, discover

log = logging.getLogger("bnfold.service")
IndexState = Literal["READY", "UNAVAILABLE", "LOADING"]
Fingerprint = tuple[tuple[str, int, int], ...]
T = TypeVar("T")
UNLOADED = "unloaded by request"
REMOVED = "removed from the repository"


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index: a model version (version None: the model has none loaded)."""

    name: str
    version: str | None
    state: IndexState
    reason: str

    def to_json(self) -> dict[str, str]:
        document = {"name": self.name, "state": self.state, "reason": self.reason}
        return document if self.version is None else {"name": self.name, "version": self.version} | document


def fingerprint(directory: Path) -> Fingerprint | None:
    """(name, size, mtime_ns) of the entry's files: a change of any file changes it; None if unreadable."""
    try:
        with os.scandir(directory) as files:
            return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()))
    except OSError:
        return None


async def in_own_thread(name: str, function: Callable[[], T]) -> T:
    """`function()` in a new daemon thread; awaiting it never ties up the loop or the shared thread pool."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # abandoned after a timeout
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        result, error = None, None
        try:
            result = function()
        except BaseException as raised:  # handed to the awaiting task
            error = raised
        with contextlib.suppress(RuntimeError):  # the loop has closed (shutdown during a load)
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=f"bnfold-load-{name}", daemon=True).start()
    return await future


UNSUPPORTED_LOAD = "bnfold loads entries from its repository directory only; drop the 'config' and 'file:' parameters"


def check_load_parameters(names: Iterable[str]) -> None:
    """BadRequestError for Triton's load overrides (`config`, `file:…`): entries come from the repository only."""
    if any(name == "config" or name.startswith("file:") for name in names):
        raise BadRequestError(UNSUPPORTED_LOAD)


class RepositoryControl:
    """Loads, swaps and unloads the models of one data plane's registry."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.registry = plane.registry
        self.repository = plane.settings.repository
        self.context = LoadContext.for_models(plane.settings, len(plane.registry.models), plane.metrics)
        self._locks: dict[str, asyncio.Lock] = {}
        self._loading: set[str] = set()
        self._last_failure: dict[str, str] = {}  # a failed reload while the previous model serves
        self._fingerprints: dict[str, Fingerprint | None] = {}

    async def startup(self) -> None:
        """Load every model found at startup, one after the other, then mark the registry loaded."""
        for name in list(self.registry.models):
            with contextlib.suppress(BadRequestError, NotFoundError):  # unavailable with its reason, logged
                await self.load(name)
        self.registry.loaded = True
        ready = sum(model.state == "ready" for model in self.registry.models.values())
        log.info("loading ended: %d of %d models ready", ready, len(self.registry.models))

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository or the registry, one entry per loaded version."""
        names = sorted(set(self._present()) | set(self.registry.models))
        entries = [entry for name in names for entry in self._entries(name)]
        return [entry for entry in entries if entry.state == "READY"] if ready_only else entries

    def _entries(self, name: str) -> list[IndexEntry]:
        model = self.registry.models.get(name)
        if model is None:
            hint = f"not loaded; load it with POST /v2/repository/models/{name}/load"
            reason = self.registry.unloaded.get(name, hint)
            state: IndexState = "LOADING" if name in self._loading else "UNAVAILABLE"
            return [IndexEntry(name, None, state, reason)]
        if model.state != "ready":
            loading = model.state == "loading" or name in self._loading
            return [IndexEntry(name, None, "LOADING" if loading else "UNAVAILABLE", model.reason or "")]
        failure = self._last_failure.get(name)
        reason = f"serving the previously loaded entry; the last load failed: {failure}" if failure else ""
        return [self._version_entry(model, version, reason) for version in VARIANTS]

    @staticmethod
    def _version_entry(model: ServedModel, version: str, reason: str) -> IndexEntry:
        if model.version_ready(version):
            return IndexEntry(model.name, version, "READY", reason)
        return IndexEntry(model.name, version, "UNAVAILABLE", f"degraded: {model.folded_degraded}")

    async def load(self, name: str) -> ServedModel:
        """Load (or reload) the entry `name` of the repository and swap it in; BadRequestError with the reason
        if it cannot be served (the previous model, if any, keeps serving)."""
        directory = self._entry_directory(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            self._loading.add(name)
            try:
                files = fingerprint(directory)
                model = await self._load_with_timeout(name, directory)
            finally:
                self._loading.discard(name)
            self._fingerprints[name] = files
            return self._install(model)

    def _entry_directory(self, name: str) -> Path:
        if not is_valid_name(name):
            raise BadRequestError(f"{name!r} is not a valid model name (letters, digits, '_', '-', '.')")
        directory = self.repository / name
        if not directory.is_dir():
            raise BadRequestError(
                f"failed to load {name!r}: no entry directory {str(directory)!r} in the repository; "
                "export one there with bnfold fold-and-export"
            )
        return directory

    async def _load_with_timeout(self, name: str, directory: Path) -> ServedModel:
        timeout = self.plane.settings.load_timeout_seconds
        try:
            loading = in_own_thread(name, lambda: load_model(name, directory, self.context))
            return await asyncio.wait_for(loading, timeout)
        except TimeoutError:
            reason = (
                f"loading took longer than {timeout:g} s (--load-timeout-seconds); check the entry's files "
                "(size, a blocking file) or raise the timeout"
            )
            log.error("model %r not ready: %s", name, reason)
            return ServedModel(name, state="unavailable", reason=reason)

    def _install(self, model: ServedModel) -> ServedModel:
        """Swap a ready model in; otherwise keep a ready predecessor serving and raise the reason."""
        name = model.name
        previous = self.registry.models.get(name)
        if model.state == "ready":
            self._replace(name, model)
            self._last_failure.pop(name, None)
            return model
        if previous is not None and previous.state == "ready":
            self._last_failure[name] = model.reason or ""
            raise BadRequestError(f"failed to load {name!r}: {model.reason}; the previously loaded entry keeps serving")
        self._replace(name, model)
        raise BadRequestError(f"failed to load {name!r}: {model.reason}")

    def _replace(self, name: str, model: ServedModel | None, reason: str = UNLOADED) -> None:
        """Install `model` under `name` (None: take the name out of service with `reason`)."""
        previous = self.registry.models.pop(name, None)
        if model is None:
            self.registry.unloaded[name] = reason
        else:
            self.registry.models[name] = model
            self.registry.unloaded.pop(name, None)
        self._publish(name, model)
        if previous is not None:
            retire(previous)

    def _publish(self, name: str, model: ServedModel | None) -> None:
        metrics = self.plane.metrics
        metrics.model_ready.labels(name).set(model is not None and model.state == "ready")
        metrics.degraded.labels(name).set(0)
        for family in (metrics.checks, metrics.mismatches, metrics.inconclusive, metrics.failovers):
            family.labels(name)  # every model shows its zero counts from the start

    async def unload(self, name: str, reason: str = UNLOADED) -> None:
        """Take `name` out of service; requests in flight finish. NotFoundError for a name never served."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            if name not in self.registry.models:
                if name in self.registry.unloaded:
                    return
                self.registry.get(name)  # raises NotFoundError naming the models there are
            self._replace(name, None, reason)
            self._last_failure.pop(name, None)
            log.info("model %r unloaded: %s", name, reason)

    def _present(self) -> list[str]:
        try:
            return discover(self.repository)
        except OSError as error:
            log.error("cannot list the repository %s: %s", self.repository, error)
            return []

    async def poll_once(self) -> None:
        """Load entries that are new or whose files changed; unload served models whose entry is gone."""
        present = self._present()
        for name in present:
            if fingerprint(self.repository / name) != self._fingerprints.get(name, ()):
                try:
                    await self.load(name)
                except (BadRequestError, NotFoundError) as error:
                    log.error("polling: %s", error.message)
        for name in set(self.registry.models) - set(present):
            await self.unload(name, REMOVED)
            self._fingerprints.pop(name, None)

    async def poll_forever(self, seconds: float) -> None:
        """poll_once every `seconds` until cancelled."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.poll_once()
            except Exception:  # a bug must not end polling
                log.exception("polling the repository failed")


def retire(model: ServedModel) -> None:
    """Let a replaced or unloaded model's batchers stop once their queued calls have run."""
    for variant in model.variants.values():
        close = getattr(variant.runner, "close", None)
        if close is not None:
            close()
