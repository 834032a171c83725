"""The `bnfold` command: a thin dispatcher to one module per subcommand.

Subcommand modules are imported only when their command runs, so `bnfold serve` works in an environment
without PyTorch (the serving image), while `bnfold fold-and-export` needs the `fold` extra.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

import bnfold

# command -> ("module:function", one-line help). Each function takes argv (without the command) and
# returns the process exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "fold-and-export": ("bnfold.cli.export:fold_and_export_main", "fold a model and write a repository entry"),
    "verify": ("bnfold.cli.entry:verify_main", "re-run the checks of a repository entry"),
    "inspect": ("bnfold.cli.entry:inspect_main", "show a repository entry's fold report"),
    "train": ("bnfold.cli.train:train_main", "train zoo models and print their accuracy"),
    "recalibrate": ("bnfold.cli.recalibrate:recalibrate_main", "re-estimate BatchNorm population statistics"),
    "build-default": ("bnfold.cli.export:build_default_main", "build the default repository from the zoo"),
    "serve": ("bnfold.service.cli:serve_main", "serve a model repository over HTTP (Open Inference Protocol v2)"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: bnfold COMMAND [options]   (bnfold COMMAND --help for a command's options)"]
    lines += ["       bnfold --version", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def _resolve(target: str) -> Callable[[list[str]], int]:
    module_name, function_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or "a dependency"
        print(
            f"bnfold: this command needs {missing!r}, which is not installed; "
            "install the folding tools with: pip install 'bnfold[fold]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    function: Callable[[list[str]], int] = getattr(module, function_name)
    return function


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"bnfold {bnfold.__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"bnfold: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return _resolve(COMMANDS[command][0])(rest)
