"""Logging: to the journal with structured fields when systemd started us, else to stderr.

Under systemd (``JOURNAL_STREAM`` set and journald's socket present) every record goes to
journald through its native protocol (``journal.py``) with ``SYSLOG_IDENTIFIER=k3snoded``,
``LOGGER`` (the module logger) and the daemon's context fields (``K3SNODED_NODE``,
``K3SNODED_ROLE``, ``K3SNODED_K3S``), so an operator can ask ``journalctl -u k3snoded
K3SNODED_ROLE=server`` or ``LOGGER=k3snoded.vrrp.speaker``. k3s's own output goes to a separate
journal stream named ``k3s`` (``k3s_output``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping

from k3snoded import journal

JOURNAL_IDENTIFIER = "k3snoded"
Context = Callable[[], Mapping[str, str]]


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


def under_journald() -> bool:
    """systemd connected our stderr to the journal and journald's socket is there."""
    return bool(os.environ.get("JOURNAL_STREAM")) and journal.JOURNAL_SOCKET.exists()


def _context_or_empty(context: Context | None) -> Context:
    def fields() -> Mapping[str, str]:
        if context is None:
            return {}
        try:
            return context()
        except Exception:  # a broken context must not lose the log line
            return {}

    return fields


def setup_logging(debug: bool = False, context: Context | None = None) -> None:
    """Configure the root logger once, for the daemon. ``context()`` adds journal fields."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if under_journald():
        handler = journal.JournalHandler(JOURNAL_IDENTIFIER, context=_context_or_empty(context))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(_OnceFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug or os.environ.get("K3SNODED_DEBUG") else logging.INFO)
    for noisy in ("aiohttp.access", "zeroconf", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def set_context(context: Context) -> None:
    """Give the journal handler (if any) the daemon's context fields, once it exists."""
    for h in logging.getLogger().handlers:
        if isinstance(h, journal.JournalHandler):
            h.context = _context_or_empty(context)


def k3s_output() -> int | None:
    """A journal stream for k3s's stdout/stderr (``SYSLOG_IDENTIFIER=k3s``), or None when not
    under journald (k3s then inherits the daemon's stderr, as before)."""
    if not under_journald():
        return None
    return journal.stream_fd("k3s")
