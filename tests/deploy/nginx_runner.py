"""Run Debian's nginx as a foreground process with bnfold's real load-balancer template (deploy/nginx/).

The template is rendered the way the official nginx image renders /etc/nginx/templates/*.template
(substituting ${NAME} placeholders only), and included in a minimal main configuration whose pid file,
logs and temporary directories all live under a private prefix directory, so no root-owned path is used.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "bnfold.conf.template"
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str:
    """The nginx executable; a clear error naming the fix when it is not installed."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RuntimeError("nginx is not installed; install it with: sudo scripts/ensure-deploy-tools.sh")
    return found


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Substitute every ${NAME}; refuse a placeholder without a value and a value without a placeholder."""
    names = set(PLACEHOLDER.findall(text))
    if names != set(values):
        raise ValueError(f"template placeholders {sorted(names)} != values given {sorted(values)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def main_config(prefix: Path, server_config: Path) -> str:
    """A main nginx.conf like the official image's, with every writable path under `prefix`."""
    user = "user root;" if os.geteuid() == 0 else ""  # workers keep the rights needed for `prefix`
    temp_paths = "\n".join(f"    {name}_temp_path {prefix / name};" for name in TEMP_DIRS)
    return f"""
{user}
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    access_log {prefix / "access.log"};
{temp_paths}
    include {server_config};
}}
"""


class NginxProcess:
    """`nginx -g 'daemon off;'` with the rendered template; a context manager that stops it on exit."""

    def __init__(self, prefix: Path, values: Mapping[str, str]) -> None:
        self.prefix = prefix
        self.port = int(values["NGINX_PORT"].rsplit(":", 1)[-1])
        for name in TEMP_DIRS:
            (prefix / name).mkdir(parents=True, exist_ok=True)
        server_config = prefix / "bnfold.conf"
        server_config.write_text(render_template(TEMPLATE.read_text(), values))
        (prefix / "nginx.conf").write_text(main_config(prefix, server_config))
        self._process: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        config = str(self.prefix / "nginx.conf")
        return [nginx_binary(), "-p", str(self.prefix), "-e", "stderr", "-c", config, *extra]

    def __enter__(self) -> NginxProcess:
        self._process = subprocess.Popen([*self.command("-g", "daemon off;")], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self._process.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/lb/health", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not answer on /lb/health within 10 s")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        assert self._process is not None
        self._process.terminate()
        self._process.communicate(timeout=10)  # waits, and closes the stderr pipe
