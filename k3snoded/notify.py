"""The sd_notify protocol, both ways.

``SystemdNotifier`` tells systemd about k3snoded itself (READY=1, STATUS=, WATCHDOG=1, STOPPING=1)
over ``$NOTIFY_SOCKET``; it is a pure-socket implementation (systemd-python may be absent) and a
no-op when the variable is unset. ``NotifyListener`` is the other side: a private datagram socket
whose path is given to a supervised child as its ``NOTIFY_SOCKET``, so that the child's READY=1
reaches the supervisor rather than systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

_MAX_DATAGRAM = 4096
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux


def _address(value: str) -> str | bytes:
    """A NOTIFY_SOCKET value as a socket address: '@name' is in the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """How often to send WATCHDOG=1 (half the timeout), or None when systemd wants no pings.

    ``WATCHDOG_USEC`` is the timeout; ``WATCHDOG_PID``, when set, must name this process.
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(os.getpid()):
        return None
    return usec / 2_000_000


class SystemdNotifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET``; does nothing when it is unset.

    Sending never blocks and never raises: a failure is logged once, then quietly.
    """

    def __init__(self, socket_path: str | None = None) -> None:
        self._target = socket_path or None
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True when it was delivered."""
        if self._target is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, _address(self._target))
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self._target, exc)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"] + ([f"STATUS={status}"] if status is not None else [])
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text.replace(chr(10), ' ')}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"] + ([f"STATUS={status}"] if status is not None else [])
        return self.notify(*lines)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True)
class NotifyMessage:
    """One datagram received on a NotifyListener: its assignments and the sender's pid."""

    fields: Mapping[str, str] = field(default_factory=dict)
    pid: int | None = None


def parse_message(data: bytes) -> dict[str, str]:
    """Parse newline-separated ``KEY=VALUE`` assignments; malformed lines are skipped."""
    result: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            result[key] = value
    return result


class NotifyListener:
    """A private sd_notify socket for a child: ``async with NotifyListener(path) as lst: ...``.

    Binds a unix datagram socket at ``path`` (mode 0600, replacing a stale file), learns each
    sender's pid through SO_PASSCRED, and delivers every message to ``callback`` when given,
    else to the ``messages`` queue. The socket file is removed on exit.
    """

    def __init__(self, path: Path, callback: Callable[[NotifyMessage], None] | None = None) -> None:
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise ValueError(f"notify socket path is too long for a unix socket: {path}")
        self._path = path
        self._callback = callback
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.messages: asyncio.Queue[NotifyMessage] = asyncio.Queue()

    @property
    def path(self) -> Path:
        """The value to give the child as ``NOTIFY_SOCKET``."""
        return self._path

    async def __aenter__(self) -> NotifyListener:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            sock.bind(str(self._path))
            # 0600: nobody else may claim readiness. (Not via umask: it is process-wide.)
            os.chmod(self._path, 0o600)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(64):  # bounded: drain what is queued, then yield to the loop
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(
                    _MAX_DATAGRAM, socket.CMSG_SPACE(_UCRED.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("cannot read the notify socket %s: %s", self._path, exc)
                return
            pid: int | None = None
            for level, kind, cdata in ancdata:
                if (
                    level == socket.SOL_SOCKET
                    and kind == socket.SCM_CREDENTIALS
                    and len(cdata) >= _UCRED.size
                ):
                    pid = _UCRED.unpack_from(cdata)[0]
            message = NotifyMessage(parse_message(data), pid)
            if self._callback is not None:
                self._callback(message)
            else:
                self.messages.put_nowait(message)
