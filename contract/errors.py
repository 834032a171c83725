"""The one error type of the contract; callers re-raise it as their own (EntryError, VerificationError...)."""

from __future__ import annotations


class ContractError(ValueError):
    """A repository entry breaks the contract; the message names what is wrong and how to fix it."""
