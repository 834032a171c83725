"""Read a Dockerfile into stages of (INSTRUCTION, arguments), joining `\\` continuation lines."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

FROM_LINE = re.compile(r"^\S+(?:\s+AS\s+(\S+))?$", re.IGNORECASE)


@dataclass
class Stage:
    """One FROM … section: its name (or None) and its instructions in order."""

    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, instruction: str) -> list[str]:
        return [arguments for name, arguments in self.instructions if name == instruction]

    def index(self, instruction: str, contains: str) -> int:
        """Position of the first `instruction` whose arguments contain `contains` (ValueError if none)."""
        for position, (name, arguments) in enumerate(self.instructions):
            if name == instruction and contains in arguments:
                return position
        raise ValueError(f"no {instruction} containing {contains!r} in stage {self.name}")


def logical_lines(text: str) -> list[str]:
    """Lines with comments dropped and `\\`-continued lines joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse_stages(path: Path) -> list[Stage]:
    """The stages of the Dockerfile at `path` (instructions before the first FROM are dropped)."""
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = FROM_LINE.match(arguments.strip())
            stages.append(Stage(match.group(1) if match else None))
        elif stages:
            stages[-1].instructions.append((instruction, " ".join(arguments.split())))
    return stages
