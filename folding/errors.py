"""Errors raised by bnfold's folding side.

Exception hierarchy::

    BnfoldError                 base of everything bnfold raises on purpose
    └── FoldingError            a model cannot be captured or folded (names the cause and what to try)

Every message says what went wrong and how to fix it; callers show it as one line, never a traceback.
"""

from __future__ import annotations


class BnfoldError(Exception):
    """Base class for errors bnfold raises deliberately."""


class FoldingError(BnfoldError):
    """The model cannot be captured or folded; the message names the cause and what to try."""
