"""logrus-style (text formatter) and klog-style log lines on stderr, like k3s writes them."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import NoReturn

_debug = False


def set_debug(enabled: bool) -> None:
    global _debug  # noqa: PLW0603 - one process-wide switch, like logrus.SetLevel
    _debug = enabled


def _quote(msg: str) -> str:
    escaped = msg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _emit(level: str, msg: str) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f'time="{now}" level={level} msg={_quote(msg)}\n'
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def debug(msg: str) -> None:
    if _debug:
        _emit("debug", msg)


def info(msg: str) -> None:
    _emit("info", msg)


def warning(msg: str) -> None:
    _emit("warning", msg)


def error(msg: str) -> None:
    _emit("error", msg)


def fatal(msg: str) -> NoReturn:
    """logrus.Fatal: one line, exit status 1 (the k3s `Error: ...` form)."""
    _emit("fatal", f"Error: {msg}")
    os._exit(1)


def klog_fatal(source: str, msg: str) -> NoReturn:
    """klog fatal (e.g. ``leaderelection lost``) from an embedded component: exit status 255."""
    now = dt.datetime.now()
    stamp = now.strftime("%m%d %H:%M:%S.%f")
    try:
        sys.stderr.write(f"F{stamp} {os.getpid():7d} {source}] {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(255)


def klog(severity: str, source: str, msg: str) -> None:
    """A klog line (``E1125 18:14:24.123456    1234 source] msg``) from an embedded component."""
    now = dt.datetime.now()
    try:
        stamp = now.strftime("%m%d %H:%M:%S.%f")
        sys.stderr.write(f"{severity}{stamp} {os.getpid():7d} {source}] {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
