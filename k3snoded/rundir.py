"""``node.run_dir`` is k3snoded's own directory, made 0700: never a shared one.

The daemon keeps its control socket (and the supervisor its pid file and k3s's notify socket)
there and makes the directory mode 0700. Pointed at ``/run``, ``/tmp`` or ``/etc``, that chmod
would lock every other program out of a system directory. :func:`shared_reason` refuses
well-known system directories and any existing directory others may write to (sticky or
world-writable, like ``/tmp``); the config check and the daemon (:func:`make_private`, before
the chmod, in case the directory changed since) both use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from k3snoded.errors import K3snodedError

SHARED = frozenset(
    Path(p)
    for p in (
        "/", "/bin", "/boot", "/dev", "/dev/shm", "/etc", "/home", "/lib", "/lib64", "/media",
        "/mnt", "/opt", "/proc", "/root", "/run", "/run/lock", "/run/user", "/sbin", "/srv",
        "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin", "/var",
        "/var/cache", "/var/lib", "/var/lock", "/var/log", "/var/run", "/var/tmp",
    )
)  # fmt: skip


def shared_reason(path: Path) -> str | None:
    """Why ``path`` must not be the run directory, or None if it may."""
    if not path.is_absolute():
        return f"{path} is not an absolute path"
    candidates = {Path(os.path.normpath(path)), Path(os.path.realpath(path))}
    if candidates & SHARED:
        return (
            f"{path} is a shared system directory, and k3snoded makes its run directory mode "
            "0700; use a directory of its own, e.g. /run/k3snoded"
        )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None  # created by the daemon, 0700
    except OSError as exc:
        return f"cannot access {path}: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode) and st.st_mode & (stat.S_ISVTX | stat.S_IWOTH | stat.S_IWGRP):
        return (
            f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): a shared "
            "directory; k3snoded needs one of its own, which it makes mode 0700"
        )
    return None


def make_private(path: Path) -> None:
    """Create ``path`` (mode 0700) or make it 0700; K3snodedError if it is a shared one."""
    reason = shared_reason(path)
    if reason:
        raise K3snodedError(f"node.run_dir: {reason}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
