"""Process mechanics: sd_notify, shutdown signals, the process title."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys

_saved_notify: str | None = None


def take_notify_socket() -> None:
    """Save and unset NOTIFY_SOCKET so children cannot notify (k3s does this first)."""
    global _saved_notify  # noqa: PLW0603 - process-wide, like the environment itself
    _saved_notify = os.environ.pop("NOTIFY_SOCKET", None)


def notify_ready() -> bool:
    """Send READY=1 to the saved NOTIFY_SOCKET (abstract names start with '@')."""
    if not _saved_notify:
        return False
    addr = _saved_notify
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(addr)
            sock.sendall(b"READY=1")
        except OSError:
            return False
    return True


class Shutdown:
    """First SIGTERM/SIGINT sets the event ``delay`` seconds later (k3s cancels its components
    through a delayed context: util.DelayCancel, 5 s); a second signal exits 1 at once."""

    def __init__(self, delay: float = 0.0) -> None:
        self.event = asyncio.Event()
        self.delay = delay
        self._count = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._count += 1
        if self._count > 1:
            name = {signal.SIGTERM: "terminated", signal.SIGINT: "interrupt"}.get(sig, sig.name)
            from tests.fakes.k3s_stub import logs

            logs.error(f"Second shutdown signal received: {name}, exiting...")
            sys.stdout.flush()
            os._exit(1)
        if self._loop is not None and self.delay > 0:
            self._loop.call_later(self.delay, self.event.set)
        else:
            self.event.set()


def set_title(command: str) -> None:
    """Show ``<argv0> <command>`` instead of the real argv (k3s SetProcTitle).

    comm becomes ``k3s-<command>``; the original argv area (which CPython no longer reads after
    start-up) is overwritten in place, padded with NULs, so flags such as ``--token`` vanish
    from ``ps`` and ``/proc/<pid>/cmdline``.
    """
    argv0 = os.environ.pop("K3S_FAKE_ARGV0", "") or "k3s"
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as fh:
        fh.write(f"k3s-{command}"[:15])
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    if size <= 1:
        return
    title = f"{argv0} {command}".encode()[: size - 1]
    ctypes.memmove(start, title.ljust(size, b"\0"), size)
