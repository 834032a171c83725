"""The trained-weights cache: a generated artifact, so `make serve` twice does not retrain.

Location: $BNFOLD_CACHE_DIR, default ~/.cache/bnfold; files `weights/NAME-seedSEED-DIGEST.pt` (a state_dict,
read back with `torch.load(weights_only=True)`) and a `.json` sidecar with the metrics and training time.
DIGEST hashes everything that decides the trained weights: the source of the architectures, data and
training modules, the training config and the torch version. Change any of them and the cache misses.
Files are written to a temporary name and renamed, so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bnfold.models.zoo import architectures, data, training

CACHE_ENV = "BNFOLD_CACHE_DIR"


def cache_root(override: Path | None = None) -> Path:
    """The cache directory: `override`, else $BNFOLD_CACHE_DIR, else ~/.cache/bnfold."""
    if override is not None:
        return override
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "bnfold"


@dataclass(frozen=True)
class CacheKey:
    """Model name + seed + training config; `digest` adds the training code and torch version."""

    name: str
    seed: int
    config: str

    def digest(self) -> str:
        hasher = hashlib.sha256()
        for module in (architectures, data, training):
            hasher.update(Path(str(module.__file__)).read_bytes())
        hasher.update(f"{self.config}|{torch.__version__}".encode())
        return hasher.hexdigest()[:16]

    def stem(self) -> str:
        return f"{self.name}-seed{self.seed}-{self.digest()}"


@dataclass(frozen=True)
class CachedWeights:
    """A net restored from the cache."""

    model: nn.Module
    metrics: dict[str, float]
    seconds: float
    path: Path


def _paths(key: CacheKey, cache_dir: Path | None) -> tuple[Path, Path]:
    folder = cache_root(cache_dir) / "weights"
    return folder / f"{key.stem()}.pt", folder / f"{key.stem()}.json"


def load(key: CacheKey, factory: Callable[[], nn.Module], cache_dir: Path | None = None) -> CachedWeights | None:
    """The cached net for `key`, or None on a miss (or an unreadable entry, which is then retrained)."""
    weights_path, meta_path = _paths(key, cache_dir)
    if not (weights_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        model = factory()
        model.load_state_dict(torch.load(weights_path, weights_only=True))
    except Exception:  # torch.load on a damaged file raises anything (IndexError, UnpicklingError, …)
        return None
    model.eval()
    return CachedWeights(model, dict(meta["metrics"]), float(meta["seconds"]), weights_path)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def store(key: CacheKey, outcome: training.TrainOutcome, cache_dir: Path | None = None) -> Path:
    """Cache a trained net; returns the weights file's path."""
    weights_path, meta_path = _paths(key, cache_dir)
    _atomic_write(weights_path, lambda p: torch.save(outcome.model.state_dict(), p))
    meta = {"name": key.name, "seed": key.seed, "config": key.config, "metrics": outcome.metrics}
    meta["seconds"] = outcome.seconds
    _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2)))
    return weights_path
