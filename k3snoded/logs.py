"""Logging: to the journal with structured fields when systemd started us, else to stderr."""

from __future__ import annotations

import logging
import os
import sys
import time


class _OnceFilter(logging.Filter):
    """Lets a record through once per (logger, message template) within ``window`` seconds.

    Attach to noisy loggers (network input) so a repeated error is logged once, then quietly.
    """

    def __init__(self, window: float = 300.0) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "once", False):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self.window:
            return False
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[key] = now
        return True


def _journal_handler() -> logging.Handler | None:
    if not os.environ.get("JOURNAL_STREAM"):
        return None
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="k3snoded")
    return handler


def setup_logging(debug: bool = False) -> None:
    """Configure the root logger once, for the daemon."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _journal_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(_OnceFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug or os.environ.get("K3SNODED_DEBUG") else logging.INFO)
    for noisy in ("aiohttp.access", "zeroconf", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
