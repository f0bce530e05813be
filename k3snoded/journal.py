"""journald's native protocol, spoken directly (no systemd-python, no libsystemd).

Two things k3snoded needs from the journal, both documented stable interfaces of systemd
(systemd.journal-fields(7), "Native Journal Protocol" in systemd's docs):

* ``JournalHandler``: log records as datagrams of ``FIELD=value`` lines to
  ``/run/systemd/journal/socket``, so ``journalctl -u k3snoded K3SNODED_ROLE=server`` works.
  A value holding a newline uses the binary form (name, newline, 64-bit little-endian length,
  value). A message too big for a datagram goes in a sealed memfd passed with SCM_RIGHTS, as
  libsystemd does.
* ``stream_fd(identifier)``: a stream connection to ``/run/systemd/journal/stdout`` announcing
  ``identifier`` as SYSLOG_IDENTIFIER, to be the stdout/stderr of a child (k3s), so its own
  lines are attributed to it (``journalctl -t k3s``), not to the daemon that started it.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
STDOUT_SOCKET = Path("/run/systemd/journal/stdout")

# syslog priorities by logging level (journald's PRIORITY field)
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
_F_SEAL_SEAL, _F_SEAL_SHRINK, _F_SEAL_GROW, _F_SEAL_WRITE = 0x1, 0x2, 0x4, 0x8
_F_ADD_SEALS = 1033
_VALID_NAME = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels in between round down to the next)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def valid_field_name(name: str) -> bool:
    """journald accepts upper-case letters, digits and '_', not starting with '_' or a digit."""
    return 0 < len(name) <= 64 and name[0] not in "_0123456789" and set(name) <= _VALID_NAME


def encode(fields: Mapping[str, str]) -> bytes:
    """One journal entry in the native format. Invalid field names raise ValueError."""
    out = bytearray()
    for name, value in fields.items():
        if not valid_field_name(name):
            raise ValueError(f"invalid journal field name {name!r}")
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each record to journald with MESSAGE, PRIORITY, identifiers and context fields.

    ``context()`` is called per record and returns extra fields (e.g. the node's current role);
    a record may carry more in ``extra={"journal": {...}}``. A failure to send is reported by
    ``handleError`` (stderr), never raised into the daemon.
    """

    def __init__(
        self,
        identifier: str,
        *,
        context: Callable[[], Mapping[str, str]] | None = None,
        path: Path = JOURNAL_SOCKET,
    ) -> None:
        super().__init__()
        self.identifier = identifier
        self.context = context
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        fields = {
            "MESSAGE": message,
            "PRIORITY": str(priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
        }
        if self.context is not None:
            fields.update(self.context())
        extra = getattr(record, "journal", None)
        if isinstance(extra, Mapping):
            fields.update({str(k): str(v) for k, v in extra.items()})
        return {k: v for k, v in fields.items() if valid_field_name(k)}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(encode(self.fields(record)))
        except Exception:
            self.handleError(record)

    def send(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, str(self.path))
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        """Too big for one datagram: journald reads the entry from a sealed memfd."""
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            seals = _F_SEAL_SEAL | _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_WRITE
            fcntl.fcntl(fd, _F_ADD_SEALS, seals)
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))
            # sendmsg, not socket.send_fds: send_fds ignores its address argument.
            self._sock.sendmsg([b""], [rights], 0, str(self.path))
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        super().close()


def stream_fd(identifier: str, *, path: Path = STDOUT_SOCKET, level: int = 6) -> int | None:
    """A write-only stream into the journal whose lines carry ``SYSLOG_IDENTIFIER=identifier``
    and priority ``level``; None when journald is not there. The caller owns the descriptor
    (give it to a child as stdout/stderr, then close it).

    The header is what ``systemd-cat`` sends: identifier, unit id (empty), priority, level
    prefix (off: k3s writes no ``<N>`` prefixes), forward to syslog, to kmsg, to console (off).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(str(path))
        sock.shutdown(socket.SHUT_RD)
        sock.sendall(f"{identifier}\n\n{level}\n0\n0\n0\n0\n".encode())
        sock.setblocking(True)
        return sock.detach()
    except OSError:
        sock.close()
        return None
