#!/usr/bin/env python3
"""Container healthcheck: exit 0 when `bnfold serve` answers 200 on GET /v2/health/ready, else exit 1.

Standard library only (the image has no curl). Reads the same BNFOLD_HOST / BNFOLD_PORT as the server; a
wildcard host (0.0.0.0, ::) is checked on 127.0.0.1. Prints one line saying why when not healthy.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def ready_url() -> str:
    host = os.environ.get("BNFOLD_HOST", "127.0.0.1")
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{os.environ.get('BNFOLD_PORT', '8000')}/v2/health/ready"


def main() -> int:
    url = ready_url()
    try:
        with urllib.request.urlopen(url, timeout=float(os.environ.get("BNFOLD_HEALTHCHECK_TIMEOUT", "3"))):
            return 0
    except urllib.error.HTTPError as error:
        print(f"healthcheck: {url} answered {error.code}: {error.read(300).decode(errors='replace')}", file=sys.stderr)
    except OSError as error:
        print(f"healthcheck: {url} unreachable: {getattr(error, 'reason', error)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
