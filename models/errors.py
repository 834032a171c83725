"""Errors of the model side (zoo, fold-and-export, verify); importable without torch.

    ModelsError           base; the message is one line naming the problem and the fix
    ├── BadInputError     the user's SPEC, weights, shape, name or output directory cannot be used
    │   └── UsageError    the command line itself is wrong (a malformed SPEC or --input-shape): exit code 2
    └── VerificationError a check failed (checker, onnxruntime vs reference, BN counts, digests)

The command-line entry points print `bnfold <command>: <message>` and exit with a non-zero code; they
never show a traceback for these.
"""

from __future__ import annotations


class ModelsError(Exception):
    """Base of the model side's deliberate errors."""


class BadInputError(ModelsError):
    """The input cannot be used; the message says what to change."""


class UsageError(BadInputError):
    """The command line is malformed (the CLI exits with code 2, as argparse does)."""


class VerificationError(ModelsError):
    """A verification check failed; the message names the check and by how much it failed."""
