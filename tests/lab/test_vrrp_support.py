"""Helpers for the VRRP lab tests (no tests here): our speaker in a machine, and a sampler.

The sampler reads every machine's eth0 addresses about every 10 ms through one netlink socket
per namespace (pyroute2, about 1 ms per machine) and answers "how long were there ever two
holders?", counting only machines whose link the test has not taken down (a downed link keeps
its stale copy until the kernel lifetime runs out, but nobody can reach it there).
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from tests.lab.netns import Machine

VIP = "198.18.0.100"
PYTHON = ".venv/bin/python"
ADVERT = 0.1
CLUSTER = "lab"
TOKEN = "lab-vrrp-token-3c1e9a7f52d04b86"  # the speakers' cluster token (the attacker lacks it)


def token_file(machine: Machine) -> Path:
    """The lab's token file (0600), shared by every speaker of the lab."""
    path = machine.lab.workdir / "vrrp-token"
    if not path.exists():
        path.write_text(TOKEN + "\n")
        path.chmod(0o600)
    return path


def auth_args(machine: Machine, authenticated: bool = True) -> list[str]:
    """The runner's arguments for authenticated adverts (default) or the unauthenticated mode."""
    if not authenticated:
        return ["--authentication", "none"]
    return ["--token-file", str(token_file(machine)), "--cluster", CLUSTER]


@dataclass
class Ours:
    """Our speaker (``python -m k3snoded.vrrp``) running in one machine."""

    machine: Machine
    proc: subprocess.Popen[bytes]
    status_file: Path
    log_file: Path

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def state(self) -> str | None:
        value = self.status().get("state")
        return str(value) if value is not None else None

    def signal(self, sig: int) -> None:
        self.machine.kill(self.proc, sig)

    def stop(self, timeout: float = 5.0) -> int:
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(5)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def start_ours(
    machine: Machine,
    priority: int,
    *extra: str,
    vip: str = f"{VIP}/24",
    tag: str = "",
    authenticated: bool = True,
) -> Ours:
    """Spawn our speaker in machine (ended at lab teardown); adverts authenticated unless
    ``authenticated=False`` (the mode for keepalived without auth_hmac)."""
    base = machine.lab.workdir
    status = base / f"vrrp-{machine.name}{tag}.json"
    status.unlink(missing_ok=True)
    log_file = base / f"vrrp-{machine.name}{tag}.log"
    argv = [PYTHON, "-m", "k3snoded.vrrp", "--interface", machine.interface, "--vip", vip]
    argv += ["--priority", str(priority), "--advert-interval", str(ADVERT)]
    argv += ["--status-file", str(status), "--log-level", "DEBUG"]
    argv += [*auth_args(machine, authenticated), *extra]
    with log_file.open("ab") as log:
        proc = machine.spawn(argv, stdout=log, stderr=subprocess.STDOUT)
    return Ours(machine, proc, status, log_file)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll check every 20 ms until true; return seconds waited; AssertionError on timeout."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def holders(machines: Sequence[Machine], vip: str = VIP) -> set[str]:
    return {m.name for m in machines if vip in m.ipv4_addresses()}


@dataclass
class Sampler:
    """Samples which machines hold the VIP, in a thread, until stopped (bounded by max_seconds)."""

    machines: Sequence[Machine]
    vip: str = VIP
    period: float = 0.01
    max_seconds: float = 60.0
    samples: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    link_down: set[str] = field(default_factory=set)  # machines to leave out of the count
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    error: BaseException | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        sockets = [(m.name, IPRoute(netns=m.netns)) for m in self.machines]
        try:
            end = time.monotonic() + self.max_seconds
            while not self._stop.is_set() and time.monotonic() < end:
                now = time.monotonic()
                held = set()
                for name, ipr in sockets:
                    addrs = {a.get("address") for a in ipr.addr("dump", family=2)}
                    if self.vip in addrs:
                        held.add(name)
                with self._lock:
                    self.samples.append((now, frozenset(held - self.link_down)))
                self._stop.wait(self.period)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
        finally:
            for _, ipr in sockets:
                ipr.close()

    def exclude(self, machine: Machine) -> None:
        """From now on, do not count machine (its link is down)."""
        with self._lock:
            self.link_down.add(machine.name)

    def include(self, machine: Machine) -> None:
        with self._lock:
            self.link_down.discard(machine.name)

    def longest_overlap(self, since: float = 0.0) -> float:
        """The longest stretch (seconds) during which two or more machines held the VIP."""
        with self._lock:
            samples = [s for s in self.samples if s[0] >= since]
        longest, start = 0.0, None
        for t, held in samples:
            if len(held) >= 2 and start is None:
                start = t
            elif len(held) < 2 and start is not None:
                longest, start = max(longest, t - start), None
        if start is not None and samples:
            longest = max(longest, samples[-1][0] - start)
        return longest

    def first_held(self, name: str, since: float) -> float | None:
        """The time of the first sample at or after since in which name held the VIP."""
        with self._lock:
            return next((t for t, held in self.samples if t >= since and name in held), None)

    def max_gap(self) -> float:
        """The longest time between two samples: what the sampling itself can blur."""
        with self._lock:
            times = [t for t, _ in self.samples]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def unheld(self, since: float = 0.0, among: Sequence[str] | None = None) -> float:
        """Total seconds (from sample to sample) during which nobody in ``among`` (default:
        every sampled machine) held the VIP."""
        names = set(among) if among is not None else {m.name for m in self.machines}
        with self._lock:
            samples = [s for s in self.samples if s[0] >= since]
        return sum(b[0] - a[0] for a, b in itertools.pairwise(samples) if not (a[1] & names))

    def moves(self, since: float = 0.0) -> int:
        """How often the set of holders changed (a takeover, a release, a second holder)."""
        with self._lock:
            samples = [s for s in self.samples if s[0] >= since]
        return sum(1 for a, b in itertools.pairwise(samples) if a[1] != b[1])

    def ever_held_by(self, name: str) -> bool:
        with self._lock:
            return any(name in held for _, held in self.samples)

    def count(self) -> int:
        with self._lock:
            return len(self.samples)
