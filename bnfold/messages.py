"""One-line error text for messages that quote another library's exception; torch-free, imports nothing of bnfold.

Every part of bnfold (folding, models, the CLI, the service) quotes a caught exception through these, so a
quoted message is always one line and, when it is long, is shortened at a word boundary and marked with "…",
never cut mid-word.
"""

from __future__ import annotations

import textwrap

ELLIPSIS = " …"


def shorten(text: str, limit: int | None) -> str:
    """`text` with its whitespace collapsed to single spaces; over `limit` characters, cut after the last whole
    word that fits and end with " …". A text whose first word alone is over the limit is kept whole."""
    collapsed = " ".join(text.split())
    if limit is None or len(collapsed) <= limit:
        return collapsed
    short = textwrap.shorten(collapsed, width=limit, placeholder=ELLIPSIS)
    return collapsed if short == ELLIPSIS.strip() or short == ELLIPSIS else short


def first_line(error: BaseException, limit: int | None = 300) -> str:
    """The first non-blank line of str(error) (the exception's type name when it has none), shortened to `limit`."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return shorten(lines[0], limit) if lines else type(error).__name__


def one_line(error: BaseException, limit: int | None = None) -> str:
    """All of str(error) on one line (the exception's type name when it is empty), shortened to `limit`."""
    return shorten(str(error), limit) or type(error).__name__
