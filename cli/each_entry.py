"""`bnfold verify REPO_DIR` and `bnfold inspect REPO_DIR`: one summary line per entry of a whole repository.

A directory holding model.json is one entry; any other directory is a repository, whose entries are its
subdirectories with a valid entry name (hidden `.`-prefixed ones, such as a writer's temporaries, are skipped
as every reader skips them). Each entry is checked on its own; the exit code is 1 when any entry fails (or
the repository has none), 0 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bnfold.cli.support import EXIT_FAILED, failure_message
from bnfold.contract.layout import MANIFEST_FILE, is_valid_name


def is_repository(path: Path) -> bool:
    """A directory that is not itself an entry (it has no model.json)."""
    return path.is_dir() and not (path / MANIFEST_FILE).exists()


def entries_of(repository: Path) -> list[Path]:
    """The entry directories of `repository`, sorted by name."""
    children = sorted(repository.iterdir())
    return [
        child for child in children if child.is_dir() and not child.name.startswith(".") and is_valid_name(child.name)
    ]


Check = Callable[[Path], tuple[str, dict[str, Any]]]


def run_each(command: str, repository: Path, check: Check, *, as_json: bool) -> int:
    """Run `check` (the entry's summary line and its JSON detail) on every entry; print `✓ NAME: line` or
    `✗ NAME: error` for each and a total; with --json, {"ok", "repository", "entries": [...]}."""
    entries = entries_of(repository)
    results = [_one(entry, check) for entry in entries]
    failed = sum(not result["ok"] for result in results)
    if as_json:
        print(json.dumps({"ok": bool(entries) and not failed, "repository": str(repository), "entries": results}))
    else:
        for result in results:
            mark, text = ("✓", result["summary"]) if result["ok"] else ("✗", result["error"])
            print(f"{mark} {result['name']}: {text}")
    if not entries:
        print(f"bnfold {command}: {repository} holds no repository entry (NAME/model.json); give REPO_DIR or "
              "REPO_DIR/NAME", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    total = f"{repository}: {len(entries) - failed} of {len(entries)} entries pass {command}"
    if not as_json:
        print(total)
    if failed:
        print(f"bnfold {command}: {failed} of {len(entries)} entries fail", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _one(entry: Path, check: Check) -> dict[str, Any]:
    try:
        summary, detail = check(entry)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        if os.environ.get("BNFOLD_DEBUG"):
            raise
        return {"name": entry.name, "ok": False, "error": failure_message(error)}
    return {"name": entry.name, "ok": True, "summary": summary, **detail}
