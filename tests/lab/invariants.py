"""The invariants sampled while a fault scenario runs (tests/lab/faults_suite.py).

- **one VIP holder**: sampled every ``SAMPLE_INTERVAL`` in a background thread, among machines
  whose eth0 is up with carrier and that no scenario has cut off (a partitioned machine holding
  the VIP on its own side is expected, like keepalived's). More than one holder is a violation
  only once it lasts longer than one advert interval plus ``TOLERANCE``.
- **servers.count restored**, **one cluster CA** (every ready server's ``/cacerts`` identical and
  unchanged), **no kine rows lost** (every durable key present before is present after, the
  ``/bootstrap`` row included), **no token leaked** (the fleet token in no cmdline of a process in
  the lab's namespaces, sampled every second, and in no daemon log).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import dbs, procs
from tests.lab.fleet import PYTHON, TOKEN, VIP, Fleet, Status
from tests.lab.netns import Lab

SAMPLE_INTERVAL = 0.03  # seconds between VIP samples (bounded below by the sampling cost)
ADVERT_INTERVAL = 0.1  # registration.vip.advert_interval, the default
# One sample interval (an episode is seen up to one sample late and ends up to one late) plus
# scheduling jitter of a loaded 2-core host (≈ 0.1 s seen for the sampler thread and VRRP timers).
TOLERANCE = 2 * SAMPLE_INTERVAL + 0.1
TOKEN_SCAN_INTERVAL = 1.0
MAX_RUN = 900.0  # no sampler runs longer than this, whatever the scenario does
VOLATILE_KEYS = ("/registry/masterleases/", "compact_rev_key")  # leases expire by design
CA_CODE = (
    "import ssl,urllib.request,sys;"
    "c=ssl.create_default_context();c.check_hostname=False;c.verify_mode=ssl.CERT_NONE;"
    "sys.stdout.write(urllib.request.urlopen('https://127.0.0.1:6443/cacerts',"
    "context=c,timeout=5).read().decode())"
)
_SIOCGIFFLAGS = 0x8913
_IFF_UP, _IFF_RUNNING = 0x1, 0x40
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Outcome:
    scenario: str
    recovery: float
    violations: list[str]
    notes: dict[str, Any] = field(default_factory=dict)


class InvariantSampler:
    """Samples the invariants in a background thread while a scenario runs (bounded in time)."""

    def __init__(self, fleet: Fleet, db: dbs.Database, *, max_run: float = MAX_RUN) -> None:
        self.fleet = fleet
        self.db = db
        self.max_run = max_run
        self.violations: list[str] = []
        self.notes: dict[str, Any] = {}
        self.isolated: set[str] = set()  # machines a scenario cut off (partition)
        self.excluded: set[str] = set()  # machines a scenario left dead (not restarted)
        self.fresh_cluster = False  # a scenario that wipes the cluster (cold boot on empty data)
        self.max_overlap = 0.0  # longest time with >1 holder, violation or not
        self.no_holder = 0.0  # total time with no holder (the VIP unreachable)
        self.moves = 0  # times the VIP settled on a different single machine
        self._holders: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="invariants", daemon=True)
        self._samples = 0
        self.ca_before = ""
        self.keys_before: dict[str, int] = {}

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.ca_before = one_ca(self.fleet)
        self.keys_before = kine_keys(self.db)
        self._thread.start()
        deadline = time.monotonic() + 5
        while self._samples == 0 and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.notes["vip_samples"] = self._samples
        self.notes["max_overlap_s"] = round(self.max_overlap, 3)
        self.notes["no_holder_s"] = round(self.no_holder, 2)
        self.notes["vip_moves"] = self.moves

    def violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    def holders(self) -> tuple[str, ...]:
        """Machines holding the VIP at the last sample (link up, not cut off)."""
        with self._lock:
            return self._holders

    # ---- the thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        nodes = self.fleet.nodes
        fds = {n.name: os.open(f"/run/netns/{n.machine.netns}", os.O_RDONLY) for n in nodes}
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        began = time.monotonic()
        last = began
        settled: tuple[str, ...] = ()  # the last single holder seen
        since: float | None = None  # start of the current episode with >1 holder
        counted = False
        leaked: set[int] = set()
        next_scan = began
        try:
            while not self._stop.is_set() and time.monotonic() - began < self.max_run:
                t = time.monotonic()
                holders = tuple(
                    n.name
                    for n in nodes
                    if n.name not in self.isolated and _holds_vip(fds[n.name], n.machine.interface)
                )
                with self._lock:
                    if not holders and self._samples:
                        self.no_holder += t - last
                    self._holders = holders
                    self._samples += 1
                last = t
                if len(holders) == 1 and holders != settled:
                    self.moves += settled != ()
                    settled = holders
                if len(holders) > 1:
                    since = t if since is None else since
                    length = t - since
                    self.max_overlap = max(self.max_overlap, length)
                    if length > ADVERT_INTERVAL + TOLERANCE and not counted:
                        counted = True
                        self.violation(f"VIP on {', '.join(holders)} for > {length:.2f} s")
                else:
                    since, counted = None, False
                if t >= next_scan:
                    next_scan = t + TOKEN_SCAN_INTERVAL
                    for pid in set(token_in_cmdlines(self.fleet.lab)) - leaked:
                        leaked.add(pid)
                        self.violation(f"token in the cmdline of pid {pid}")
                time.sleep(max(0.0, SAMPLE_INTERVAL - (time.monotonic() - t)))
        finally:
            _setns(home)
            for fd in [*fds.values(), home]:
                os.close(fd)

    # ---- end of run -------------------------------------------------------------------------
    def finish(self) -> None:
        """The end-of-run invariants; call once the fleet has recovered."""
        exclude = self.excluded
        st = live_statuses(self.fleet, exclude)
        want = wanted_servers(self.fleet, exclude)
        got = len(ready_servers(st))
        if got != want:
            self.violation(f"servers.count not restored: {got} ready servers, want {want}")
        try:
            ca = one_ca(self.fleet, exclude)
            if ca != self.ca_before and not self.fresh_cluster:
                self.violation("the cluster CA changed")
        except AssertionError as exc:
            self.violation(str(exc))
        after = kine_keys(self.db)
        lost = [] if self.fresh_cluster else sorted(k for k in self.keys_before if k not in after)
        if lost:
            self.violation(f"kine keys lost: {lost[:5]} ({len(lost)})")
        if not any(k.startswith("/bootstrap/") for k in after):
            self.violation("no /bootstrap row in kine")
        self.notes["kine_keys"] = f"{len(self.keys_before)}->{len(after)}"
        for n in self.fleet.nodes:
            if TOKEN in n.log():
                self.violation(f"token in {n.name}'s daemon log")
        by = {s.get("bootstrapped_by") for s in st.values() if s and s.get("bootstrapped_by")}
        if len(by) > 1:
            self.violation(f"double bootstrap: bootstrapped_by {sorted(str(b) for b in by)}")


def _setns(fd: int) -> None:
    if _libc.setns(fd, procs.CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _holds_vip(ns_fd: int, interface: str) -> bool:
    """In the machine's namespace: eth0 up with carrier, and the VIP local (bind succeeds)."""
    _setns(ns_fd)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sh", interface.encode(), 0))
        except OSError:
            return False
        flags = struct.unpack("16sh", raw[:18])[1]
        if flags & (_IFF_UP | _IFF_RUNNING) != (_IFF_UP | _IFF_RUNNING):
            return False
        try:
            s.bind((VIP, 0))
        except OSError:
            return False
        return True


# ---- observations ---------------------------------------------------------------------------
def token_in_cmdlines(lab: Lab) -> list[int]:
    needle = TOKEN.encode()
    found = []
    for pid in procs.namespace_pids(lab.namespaces):
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def kine_keys(db: dbs.Database) -> dict[str, int]:
    """Durable kine keys and their row counts, read from inside the db machine."""
    code = (
        f"import json;c={db.python_connect_source()};cur=c.cursor();"
        "cur.execute('SELECT name, COUNT(*) FROM kine WHERE deleted = 0 GROUP BY name');"
        "print(json.dumps({str(n): int(k) for n, k in cur.fetchall()}))"
    )
    out = db.machine.run([str(PYTHON), "-c", code], timeout=30).stdout
    keys: dict[str, int] = json.loads(out)
    return {k: v for k, v in keys.items() if not k.startswith(VOLATILE_KEYS)}


def live_statuses(fleet: Fleet, exclude: set[str] | frozenset[str]) -> dict[str, Status | None]:
    return {n.name: n.status() for n in fleet.nodes if n.name not in exclude}


def ready_servers(st: dict[str, Status | None]) -> set[str]:
    return {
        n
        for n, s in st.items()
        if s is not None and s["node"]["role"] == "server" and s["k3s"]["ready"]
    }


def wanted_servers(fleet: Fleet, exclude: set[str]) -> int:
    eligible = sum(1 for n in fleet.nodes if not n.agent_only and n.name not in exclude)
    return min(fleet.servers, eligible)


def one_ca(fleet: Fleet, exclude: set[str] | frozenset[str] = frozenset()) -> str:
    st = live_statuses(fleet, exclude)
    cas = {
        n: fleet.node(n).machine.run([str(PYTHON), "-c", CA_CODE]).stdout for n in ready_servers(st)
    }
    if len(set(cas.values())) != 1:
        raise AssertionError(f"{len(set(cas.values()))} cluster CAs among {sorted(cas)}")
    return next(iter(cas.values()))


def recovered(fleet: Fleet, sampler: InvariantSampler, exclude: set[str]) -> bool:
    st = live_statuses(fleet, exclude)
    if any(s is None or not s["k3s"]["ready"] for s in st.values()):
        return False
    servers = ready_servers(st)
    holders = sampler.holders()  # every machine with its link up, the excluded ones too
    return (
        len(servers) == wanted_servers(fleet, exclude)
        and len(holders) == 1
        and holders[0] in servers
    )


def wait_recovered(
    fleet: Fleet, sampler: InvariantSampler, t0: float, *, exclude: set[str], timeout: float
) -> float:
    """Seconds from t0 until the fleet (without exclude) has recovered; AssertionError if not."""
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if recovered(fleet, sampler, exclude):
            return time.monotonic() - t0
        time.sleep(0.1)
    logs = "\n".join(f"--- {n.name}\n{n.log()[-2500:]}" for n in fleet.nodes)
    raise AssertionError(
        f"not recovered {timeout:.0f} s after the fault (excluded {sorted(exclude)}); "
        f"holders {sampler.holders()}\n{fleet.table()}\n{logs}"
    )


# ---- scenarios --------------------------------------------------------------------------------
