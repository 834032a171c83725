"""Do outside Docker what the Dockerfile does inside it, with the same scripts.

`docker_context` copies exactly the paths the Dockerfile COPYs from the build context (read from the
Dockerfile itself), so a file the image needs but does not copy breaks these tests as it would break the
image. `StageEnvironment` is one stage's fresh virtualenv: its dependencies are installed with
scripts/install-deps.sh, then bnfold itself with `pip install --no-deps .`, as the Dockerfile's RUN lines do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
COPY_LINE = re.compile(r"^COPY\s+(?!--from)(?:--\S+\s+)*(\S+)\s+\S+\s*$", re.MULTILINE)


def copied_sources() -> list[str]:
    """The build-context paths the Dockerfile COPYs (COPY --from=<stage> lines excluded)."""
    return sorted(set(COPY_LINE.findall(DOCKERFILE.read_text())))


def docker_context(destination: Path) -> Path:
    """A directory holding only what the Dockerfile copies into the image."""
    for source in copied_sources():
        origin = REPO_ROOT / source.rstrip("/")
        target = destination / source.rstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, target)
    return destination


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run `command`; on failure raise with its output, so a broken step reads as what broke."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class StageEnvironment:
    """A fresh virtualenv holding one image stage's software ('fold' = builder, 'serve' = runtime)."""

    venv: Path
    context: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a stage's commands see: its venv first on PATH, as the Dockerfile's ENV sets."""
        env = {key: value for key, value in os.environ.items() if not key.startswith(("BNFOLD_", "VIRTUAL_ENV"))}
        env.update(PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(self.venv), **extra)
        return env

    @classmethod
    def create(cls, stage: str, venv: Path, context: Path) -> StageEnvironment:
        environment = cls(venv, context)
        run([sys.executable, "-m", "venv", str(venv)], cwd=context, env=environment.env(), timeout=120)
        install = environment.env(PYTHON=str(environment.bin / "python"))
        run(["scripts/install-deps.sh", stage], cwd=context, env=install, timeout=600)
        pip = [str(environment.bin / "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir", "--no-deps", "."]
        run(pip, cwd=context, env=environment.env(), timeout=300)
        return environment

    def has_module(self, name: str) -> bool:
        """Whether `import name` works in this environment."""
        probe = [str(self.bin / "python"), "-c", f"import {name}"]
        return subprocess.run(probe, env=self.env(), capture_output=True, check=False).returncode == 0
