"""The `bnfold` command (console script `bnfold = bnfold.cli:main`; also `python -m bnfold.cli`).

dispatch    COMMAND → the subcommand's module, imported only when it runs (so `serve` needs no torch)
export      fold-and-export, build-default
entry       verify, inspect (torch-free)
train       train
recalibrate recalibrate
support     one-line errors, exit codes and --json output shared by the subcommands
"""

from bnfold.cli.dispatch import main

__all__ = ["main"]
