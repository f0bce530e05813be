"""No core dumps of the daemon: they would hold the cluster token and the datastore password.

``prctl(PR_SET_DUMPABLE, 0)`` makes this process non-dumpable: no core file whatever
``RLIMIT_CORE`` and ``kernel.core_pattern`` say (and no ptrace attach or /proc/PID/mem reading
by other users). Unlike ``RLIMIT_CORE=0`` (systemd's ``LimitCORE=0``) it is not inherited
across ``execve``: the kernel makes every program it starts dumpable again, so k3s, our child,
keeps the core dumps its own unit asks for (``LimitCORE=infinity``, which our unit sets too).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result: int = libc.prctl(option, arg, 0, 0, 0)
    if result < 0:
        raise OSError(ctypes.get_errno(), "prctl failed")
    return result


def forbid_core_dumps() -> bool:
    """Make this process non-dumpable; False (logged) if the kernel refused."""
    try:
        _prctl(PR_SET_DUMPABLE, 0)
    except (OSError, AttributeError) as exc:
        log.warning("cannot disable core dumps of the daemon (prctl): %s", exc)
        return False
    return True


def dumpable() -> bool:
    """Whether this process may dump core (PR_GET_DUMPABLE)."""
    return _prctl(PR_GET_DUMPABLE) != 0
