"""The ``ip`` command and namespace plumbing for the lab (no lab state here)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from tests.lab import procs


class LabError(RuntimeError):
    """A lab command failed; the message names the command and its stderr."""


def ip(*args: str, netns: str | None = None, stdin: str | None = None) -> str:
    """Run ``ip`` (optionally ``ip -n NETNS``); raise LabError on failure; return stdout."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def ip_parallel(batches: Mapping[str, str], timeout: float = 30) -> None:
    """Run ``ip -n NETNS -b -`` with each batch, all at once; raise LabError if any fails."""
    running = [
        (
            ns,
            subprocess.Popen(
                ["ip", "-n", ns, "-b", "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for ns in batches
    ]
    errors = []
    deadline = time.monotonic() + timeout
    for (ns, proc), batch in zip(running, batches.values(), strict=True):
        try:
            _, err = proc.communicate(batch, timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            err = "timed out"
        if proc.returncode != 0:
            errors.append(f"ip -n {ns}: {err.strip()}")
    if errors:
        raise LabError("; ".join(errors))


def list_namespaces() -> list[str]:
    """Names from ``ip netns list`` (the root namespace's view)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def write_sysctls(netns: str, values: Mapping[str, str]) -> None:
    """Write /proc/sys values inside netns from a short-lived thread that joins it (setns)."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            procs.setns_net(netns)
            for key, value in values.items():
                Path("/proc/sys", key).write_text(value)
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    t = threading.Thread(target=work, name=f"setns-{netns}")
    t.start()
    t.join(timeout=10)
    if t.is_alive() or errors:
        raise LabError(f"sysctl in {netns} failed: {errors[0] if errors else 'timed out'}")
