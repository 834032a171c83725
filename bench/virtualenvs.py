"""Virtualenvs for tools whose pins conflict with bnfold's (peer servers, TensorFlow), built once and cached.

A virtualenv is reused while its marker file, bnfold-requirements.txt, holds exactly the requirement list
it was built from; otherwise it is removed and built again with pip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def cached_virtualenv(home: Path, requirements: list[str]) -> Path:
    """The interpreter of a virtualenv at `home` with `requirements` pip-installed, (re)built when its marker
    file (the exact requirement list it was built from) is missing or differs."""
    marker = home / "bnfold-requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    python = home / "bin" / "python"
    if marker.is_file() and marker.read_text() == wanted and python.is_file():
        return python
    shutil.rmtree(home, ignore_errors=True)
    print(f"creating the virtualenv {home} (first run only)…", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, *requirements], check=True)
    marker.write_text(wanted)
    return python
