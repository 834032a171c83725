"""The page templates under files/ (package data), filled with string.Template; values are escaped by callers."""

from __future__ import annotations

import html
from functools import cache
from importlib import resources
from string import Template


@cache
def asset(name: str) -> str:
    """The text of files/NAME (a template, a stylesheet or a script)."""
    return resources.files("bnfold.service.ui").joinpath("files", name).read_text(encoding="utf-8")


def render(template: str, **values: str) -> str:
    """files/TEMPLATE with every $placeholder replaced; a missing value is a KeyError (a bug, not user input)."""
    return Template(asset(template)).substitute(values)


def escape(value: object) -> str:
    """Text safe inside HTML element content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def number(value: float | None, digits: int = 2) -> str:
    """A figure in scientific notation, or an em dash when there is none."""
    return "—" if value is None else f"{value:.{digits}e}"
