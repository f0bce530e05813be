"""A daemon restart that keeps k3s and the VIP where they are (decision 0005, "Restart").

Two questions the daemon answers when it is told to stop (SIGTERM):

* Is this a restart? Under systemd, ``systemctl restart`` and ``systemctl stop`` both send
  SIGTERM; what differs is the job systemd is running for the unit while it waits for us:
  ``restart`` or ``stop`` (``systemctl list-jobs``, measured on systemd 252 and 257 in the
  systemd lab). A restart leaves k3s running for the next daemon to adopt; anything else (a
  stop, a shutdown, a SIGTERM from outside systemd) stops k3s, as before.
* How does the VIP survive the seconds between the two daemons, when a backup takes over
  after 3 missed adverts (0.36 s)? The master's last advert carries a long
  Max_Adver_Interval (``HOLD_INTERVAL``): backups learn it (RFC 5798 §6.4.2) and wait
  3 x that before taking over. The address stays on the interface with a kernel lifetime of
  ``HOLD_LIFETIME`` (shorter than the backups' wait, so a daemon that never comes back cannot
  leave two holders), and a record in ``run_dir`` (kept across restarts by
  ``RuntimeDirectoryPreserve=restart``) tells the next daemon to resume as master instead of
  removing a "stale" VIP.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

from k3snoded.atomic import read_json_state, write_json_state

log = logging.getLogger(__name__)

HOLD_INTERVAL = 10.0  # seconds, advertised in the last advert: backups wait 3x this + skew
HOLD_LIFETIME = 20  # seconds the handed-over VIP stays without a daemon refreshing it
RECORD = "vip-handover.json"


def own_unit(cgroup_file: Path = Path("/proc/self/cgroup")) -> str | None:
    """The systemd service this process runs in (``k3snoded.service``), from its cgroup."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            if part.endswith(".service"):
                return part
    return None


def restart_requested(timeout: float = 5.0) -> bool:
    """True when systemd is restarting our unit (a ``restart`` job), False for anything else.

    Blocking (runs ``systemctl``): call it in a thread. Outside systemd (no INVOCATION_ID) and on
    any failure it says False: stopping k3s is the old, safe behaviour.
    """
    if not os.environ.get("INVOCATION_ID"):
        return False
    unit = own_unit()
    if unit is None:
        return False
    try:
        out = subprocess.run(
            ["systemctl", "list-jobs", "--no-legend", "--full", "--plain", unit],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("cannot ask systemd whether this is a restart (%s): treating it as a stop", err)
        return False
    return job_type(out, unit) == "restart"


def job_type(list_jobs: str, unit: str) -> str | None:
    """The type of ``unit``'s job in ``systemctl list-jobs --no-legend`` output, or None."""
    for line in list_jobs.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == unit:
            return fields[2]
    return None


def write_record(run_dir: Path, address: str, lifetime: float) -> None:
    """Tell the next daemon: ``address`` is ours until ``lifetime`` seconds from now."""
    write_json_state(run_dir / RECORD, {"address": address, "until": time.monotonic() + lifetime})


def take_record(run_dir: Path, address: str) -> float | None:
    """Seconds left of a handover of ``address`` by the previous daemon, or None. Consumed:
    the record is removed, so a later restart never resumes from a stale one."""
    path = run_dir / RECORD
    data = read_json_state(path)
    path.unlink(missing_ok=True)
    if not data or data.get("address") != address:
        return None
    try:
        left = float(data["until"]) - time.monotonic()
    except (KeyError, TypeError, ValueError):
        return None
    return left if left > 0 else None
