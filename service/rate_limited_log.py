"""A logging filter that lets at most `burst` records of each kind through per `interval_s`, and counts the rest.

A kind is the logger and the message template (`record.msg` before its arguments are filled in), so a flood
of one event ("closed 10.0.0.7:4242: no complete request head", asyncio's "socket.accept() out of system
resource", uvicorn's "Invalid HTTP request received.") is cut to `burst` lines per interval without hiding
other events. The number suppressed is reported: appended to the first record of that kind let through in a
later interval, or, if none comes, in a line of its own written by `flush()` (called by the server's tick).
Access-log lines (uvicorn.access) are never limited.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("bnfold.service.log")
UNLIMITED = frozenset({"uvicorn.access", log.name})


class RateLimitFilter(logging.Filter):
    """Filter for handlers: per (logger, template), `burst` records per `interval_s`; counts suppressed ones."""

    def __init__(self, burst: int, interval_s: float) -> None:
        super().__init__()
        self.burst, self.interval_s = burst, interval_s
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], list[float]] = {}  # kind → [window start, passed, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in UNLIMITED:
            return True
        kind, now = (record.name, str(record.msg)), time.monotonic()
        with self._lock:
            window = self._windows.get(kind)
            if window is None or now - window[0] >= self.interval_s:
                suppressed = 0 if window is None else int(window[2])
                self._windows[kind] = [now, 1, 0]
                if suppressed:
                    record.msg = f"{record.msg} [{suppressed} more like this suppressed in the previous interval]"
                return True
            if window[1] < self.burst:
                window[1] += 1
                return True
            window[2] += 1
            return False

    def flush(self) -> None:
        """Report, in one line each, kinds whose interval ended with suppressed records, and forget them."""
        now, report = time.monotonic(), []
        with self._lock:
            for kind, window in list(self._windows.items()):
                if now - window[0] >= self.interval_s:
                    del self._windows[kind]
                    if window[2]:
                        report.append((kind, int(window[2])))
        for (name, template), suppressed in report:
            log.warning("suppressed %d log lines of %s like %r in %.0f s", suppressed, name, template, self.interval_s)


def install(limiter: RateLimitFilter, logger_names: tuple[str, ...] = ("", "uvicorn", "uvicorn.error")) -> None:
    """Add `limiter` to every handler of those loggers ("" is the root), once."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            if limiter not in handler.filters:
                handler.addFilter(limiter)
