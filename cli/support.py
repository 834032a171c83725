"""Shared behaviour of the `bnfold` subcommands: one-line errors, exit codes, `--json` output.

Exit codes: 0 success, 1 the work failed (bad input, a failed check, a model that cannot be folded),
2 wrong command-line usage (argparse, or a UsageError: a malformed SPEC or --input-shape, a flag the SPEC
forbids). A failure prints `bnfold COMMAND: MESSAGE` on stderr, one line, never
a traceback (set BNFOLD_DEBUG=1 to see one); with --json it also prints {"ok": false, "error": MESSAGE}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

from bnfold.messages import one_line
from bnfold.models.errors import ModelsError, UsageError

EXIT_FAILED = 1
EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line plus the usage, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"bnfold {self.prog}: {message} (see bnfold {self.prog} --help)\n")


def expected_errors() -> tuple[type[BaseException], ...]:
    """ModelsError, plus the folding side's BnfoldError when folding was imported (it needs torch)."""
    folding_errors = sys.modules.get("bnfold.folding.errors")
    if folding_errors is None:
        return (ModelsError,)
    return (ModelsError, folding_errors.BnfoldError)


def failure_message(error: Exception) -> str:
    """The one line a command prints for `error`; an error bnfold did not expect says so and how to report it."""
    message = one_line(error)
    if not isinstance(error, (*expected_errors(), OSError)):
        message = f"unexpected {type(error).__name__}: {message} (rerun with BNFOLD_DEBUG=1 and report it)"
    return message


def run(command: str, work: Callable[[], Any], *, as_json: bool, show: Callable[[Any], None]) -> int:
    """Run `work`; print its result with `show` (or as JSON); turn every failure into one line and exit 1."""
    try:
        result = work()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        if os.environ.get("BNFOLD_DEBUG"):
            raise
        message = failure_message(error)
        print(f"bnfold {command}: {message}", file=sys.stderr)
        if as_json:
            print(json.dumps({"ok": False, "error": message}))
        return EXIT_USAGE if isinstance(error, UsageError) else EXIT_FAILED
    if as_json:
        payload = result.to_json() if hasattr(result, "to_json") else result
        print(json.dumps(payload, indent=2))
    else:
        show(result)
    return 0


def stdout_console() -> Console:
    """A rich console for tables on stdout: the terminal's width, or 200 columns when piped (no wrapping)."""
    console = Console()
    return console if console.is_terminal else Console(width=200)
