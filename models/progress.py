"""Progress for long steps (training, folding, export, verification), shown with rich on stderr.

Each step shows a spinner while it runs (on a terminal) and leaves one line with its duration, so stdout
stays free for `--json`. `Progress(quiet=True)` shows nothing (the test fixtures use it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


class Progress:
    """Times named steps and reports them on stderr."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        """Run the block as one step called `label`; its duration lands in self.seconds[label]."""
        start = time.perf_counter()
        if self.quiet:
            yield
        else:
            with self.console.status(f"{label}…"):
                yield
        self.seconds[label] = time.perf_counter() - start
        self.say(f"[green]✓[/green] {label} ({self.seconds[label]:.1f} s)")

    def say(self, message: str) -> None:
        """One line on stderr (rich markup allowed), unless quiet."""
        if not self.quiet:
            self.console.print(message)
