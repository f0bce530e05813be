"""Process mechanics for the lab: ending processes by PID, joining a namespace from a thread.

Only two kinds of process are ever signalled: ones the lab spawned (it holds their Popen), and
ones whose network namespace is, at that moment, one of the lab's own (checked by inode of
``/proc/PID/ns/net`` against ``/run/netns/NAME``). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns_net(netns: str) -> None:
    """Move the calling thread (only it) into the named network namespace."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_inode(netns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return None


def pid_netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def pid_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat ('R', 'S', 'T', 'Z', ...), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    return pid_state(pid) not in (None, "Z", "X")


def signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def namespace_pids(namespaces: Iterable[str]) -> set[int]:
    """PIDs whose network namespace is one of these (the kernel's view, not a name match)."""
    inodes = {i for i in (netns_inode(ns) for ns in namespaces) if i is not None}
    if not inodes:
        return set()
    me = os.getpid()
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != me:
            pid = int(entry.name)
            if pid_netns_inode(pid) in inodes:
                found.add(pid)
    return found


def end(
    popens: Iterable[subprocess.Popen[bytes]],
    namespaces: Iterable[str],
    *,
    extra_pids: Iterable[int] = (),
    grace: float = 3.0,
    kill_wait: float = 3.0,
) -> list[int]:
    """End the given processes and every process inside namespaces: TERM, wait, KILL.

    extra_pids are PIDs the caller knows to be its own (e.g. a spawned process's child).
    Returns the PIDs that were signalled. Spawned processes are reaped (no zombies left).
    """
    popens = list(popens)
    namespaces = list(namespaces)
    extra = set(extra_pids)
    signalled: set[int] = set()

    def targets() -> set[int]:
        pids = {p.pid for p in popens if p.poll() is None} | extra
        pids |= namespace_pids(namespaces)
        return {pid for pid in pids if alive(pid)}

    def wait_gone(pids: set[int], seconds: float) -> set[int]:
        deadline = time.monotonic() + seconds
        while True:
            for p in popens:
                p.poll()
            left = {pid for pid in pids if alive(pid)}
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.01)

    pids = targets()
    for pid in pids:
        signal_pid(pid, signal.SIGTERM)
        signal_pid(pid, signal.SIGCONT)  # a frozen process must run to handle TERM
    signalled |= pids
    left = wait_gone(pids, grace)
    for _ in range(3):  # bounded: processes may fork while being ended
        left |= targets()
        if not left:
            break
        for pid in left:
            log.info("pid %s did not end after SIGTERM; SIGKILL", pid)
            signal_pid(pid, signal.SIGKILL)
        signalled |= left
        left = wait_gone(left, kill_wait)
    for p in popens:
        if p.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=1)
    if left:
        log.error("processes still alive after SIGKILL: %s", sorted(left))
    return sorted(signalled)
