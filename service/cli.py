"""`bnfold serve`: parse flags (each also readable from BNFOLD_<NAME>), build the app, run uvicorn (on uvloop +
httptools, see server_stack).

Imports neither torch nor folding, so it runs in the serving-only environment.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from bnfold.service.settings import Settings

# Settings that are environment-only (a secret does not belong on a command line visible in `ps`).
ENV_ONLY = {"api_key"}


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting, described by the setting's own description."""
    parser = argparse.ArgumentParser(
        prog="bnfold serve",
        description="Serve a model repository over the Open Inference Protocol v2. Every flag can also be "
        "given as the environment variable BNFOLD_<FLAG> (e.g. BNFOLD_PORT); flags win.",
    )
    for name, field in Settings.model_fields.items():
        if name in ENV_ONLY:
            continue
        default = "" if field.is_required() else f" (default: {field.default})"
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, help=f"{field.description}{default}")
    return parser


def load_settings(argv: list[str]) -> Settings:
    """Settings from flags over environment; one-line SystemExit(2) naming the bad value."""
    arguments = build_parser().parse_args(argv)
    overrides = {name: value for name, value in vars(arguments).items() if value is not None}
    try:
        return Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        where = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "settings"
        message = first["msg"].removeprefix("Value error, ")
        print(f"bnfold serve: {where} (or BNFOLD_{where[2:].upper().replace('-', '_')}): {message}", file=sys.stderr)
        raise SystemExit(2) from None


def serve_main(argv: list[str]) -> int:
    """Entry point of `bnfold serve`: returns the process exit code."""
    from bnfold.service.grpc_v2.server import GrpcPortError, create_server
    from bnfold.service.server_stack import fast_stack

    settings = load_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stack = fast_stack(settings.http_protocol)
    logging.getLogger("bnfold.service").info(
        "bnfold serve on http://%s:%d (%s)", settings.host, settings.port, stack.describe()
    )
    if settings.workers > 1:
        from bnfold.service.workers import serve_workers

        serve_workers(settings)
        return 0
    try:
        server = create_server(settings, loop=stack.loop)  # the HTTP parser follows settings.http_protocol
        server.run()  # HTTP, and gRPC on --grpc-port unless 0
    except GrpcPortError as error:
        print(f"bnfold serve: {error}", file=sys.stderr)
        return 1
    return 0 if server.started else 3  # uvicorn's exit status for a failed startup (e.g. the port is taken)
