"""A simulation plan drawn from a seed: the fleet's shape and the faults, with their times.

The same seed always gives the same plan (``random.Random(seed)``, drawn in a fixed order), and
the plan alone decides the run: ``World`` draws its other random numbers (statement delays, k3s
start times) from the same seed in an order fixed by the virtual clock.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field

from k3snoded.model import RolePreference

LOCK_WAIT = 25.0  # k3s retakes a bootstrap key lock left empty after 5 polls of 5 s
FAULT_START = 20.0  # seconds of calm to form the fleet (or to be caught forming it)
KINDS = (
    "crash",
    "freeze",
    "daemon_kill",
    "daemon_restart",
    "db_down",
    "partition",
    "db_slow",
    "clock_step",
    "k3s_broken",
    "sighup",
)
WEIGHTS = (14, 12, 10, 6, 10, 10, 10, 8, 6, 6)
# Fault kinds added later are drawn from a second stream of the seed, one generation each, so
# that a seed's plan in an older generation (a regression seed in test_sim.py) stays the same.
LATER_KINDS = (
    ("die_mid_write", 0.08),  # generation 2
    ("systemd_restart", 0.15),  # generation 3
    ("rollout", 0.25),  # generation 4: planned operations (issue 15)
    ("maintenance", 0.15),  # generation 5
    ("pause", 0.12),  # generation 6
)
GENERATION = 1 + len(LATER_KINDS)
Generation = int | str  # a number, or the names of the later kinds drawn (later_kinds)


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    machine: int | None  # None: every machine / the whole datastore
    duration: float = 0.0
    arg: float = 0.0
    how: str = ""

    @property
    def gap(self) -> float:
        """Seconds a daemon is away after the fault's instant (restarted after that)."""
        return {"daemon_kill": 5.0, "systemd_restart": self.arg}.get(self.kind, 0.0)

    def describe(self) -> str:
        what = {
            "crash": f"machine crash, back after {self.duration:.1f} s"
            if math.isfinite(self.duration)
            else "machine crash, never back",
            "freeze": f"machine frozen (SIGSTOP) for {self.duration:.1f} s",
            "daemon_kill": "k3snoded SIGKILLed, restarted 5 s later",
            "daemon_restart": "k3snoded stopped (k3s too) and started again",
            "systemd_restart": "k3snoded restarted by systemd, k3s left running for the next "
            f"daemon to adopt {self.arg:.1f} s later",
            "db_down": f"datastore {self.how} for {self.duration:.1f} s",
            "partition": f"partitioned from the datastore and peers for {self.duration:.1f} s",
            "db_slow": f"datastore slow (up to {self.arg:.1f} s a statement, some answers "
            f"lost, some never) for {self.duration:.1f} s",
            "clock_step": f"database clock stepped by {self.arg:+.1f} s",
            "k3s_broken": f"k3s {self.how.replace('_', ' ')} from now on",
            "sighup": f"SIGHUP everywhere: {self.how} changed to {self.arg:g}",
            "die_mid_write": "a server crashes; the coordinator crashes in the middle of its "
            f"next role write (both back after {self.duration:.1f} s)",
            "rollout": "k3s.version changed everywhere (SIGHUP): a rolling upgrade to "
            + ("a new release" if self.how == "good" else "a release that panics at start"),
            "maintenance": f"machine put in maintenance for {self.duration:.1f} s",
            "pause": f"fleet paused for {self.duration:.1f} s",
        }[self.kind]
        return what


@dataclass(frozen=True)
class Plan:
    seed: int
    machines: int
    count: int
    preferences: tuple[RolePreference, ...]
    registration: str
    dialect: str
    boot_at: tuple[float, ...]
    k3s_faults: tuple[str, ...]
    slow_stops: tuple[bool, ...]
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    ready_timeout: float = 60.0
    stop_timeout: float = 10.0
    backoff_max: float = 30.0
    lease_ttl: float = 10.0
    dead_after: float = 10.0

    @functools.cached_property  # read at every step
    def faults_end(self) -> float:
        ends = [f.at if math.isinf(f.duration) else f.at + f.duration + f.gap for f in self.faults]
        return max([FAULT_START, *ends])

    @functools.cached_property  # read at every step
    def settle_bound(self) -> float:
        """Seconds after the last fault within which ``servers.count`` servers are ready: a
        dead member found (dead_after), a lease passed on (2 TTL), a pre-bootstrap k3s waited
        out (TTL + stop_timeout), a k3s restart's backoff, its start, k3s's own wait for the
        bootstrap lock a dead first server left (5 polls of 5 s), and a broken k3s demoted
        after ready_timeout."""
        bound = self.dead_after + 3 * self.lease_ttl + self.stop_timeout + self.backoff_max + 15
        bound += LOCK_WAIT
        if any(f.kind == "rollout" for f in self.faults):
            bound += 30.0 * self.machines  # one machine at a time: start, ready, stable
        if any(f.kind == "k3s_broken" for f in self.faults) or any(
            k != "none" for k in self.k3s_faults
        ):
            bound += 2 * self.ready_timeout
        return bound

    @functools.cached_property  # read at every step
    def settle_at(self) -> float:
        return self.faults_end + self.settle_bound

    @property
    def duration(self) -> float:
        return self.settle_at + 15.0

    def describe(self) -> str:
        prefs = ", ".join(
            f"m{i + 1}:{p.value}" for i, p in enumerate(self.preferences) if p.value != "auto"
        )
        lines = [
            f"seed {self.seed}: {self.machines} machines, servers.count {self.count}, "
            f"{self.dialect}, registration {self.registration or 'none'}"
            + (f", pinned {prefs}" if prefs else ""),
        ]
        broken = [f"m{i + 1}: {k}" for i, k in enumerate(self.k3s_faults) if k != "none"]
        if broken:
            lines.append(f"  k3s broken from boot: {', '.join(broken)}")
        for f in self.faults:
            who = "all" if f.machine is None else f"m{f.machine + 1}"
            lines.append(f"  t={f.at:7.2f} {who:<4} {f.describe()}")
        lines.append(
            f"  faults end at t={self.faults_end:.1f}; servers.count ready by "
            f"t={self.settle_at:.1f} (bound {self.settle_bound:.0f} s)"
        )
        return "\n".join(lines)


def later_kinds(generation: Generation) -> tuple[tuple[str, float], ...]:
    """The later fault kinds a plan draws: a generation number takes the first ones; a
    comma-separated list of names takes only those (the plans of seeds found on a branch where
    they were the only later kinds)."""
    if isinstance(generation, int):
        return LATER_KINDS[: generation - 1]
    names = generation.split(",")
    unknown = set(names) - {k for k, _ in LATER_KINDS}
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}")
    return tuple((k, p) for k, p in LATER_KINDS if k in names)


def parse_generation(text: str) -> Generation:
    return int(text) if text.isdigit() else text


def make_plan(seed: int, generation: Generation = GENERATION) -> Plan:
    rng = random.Random(seed)
    n = rng.choice((3, 3, 4, 4, 5))
    count = rng.choice((1, 2, 2, 2, 3)) if n > 3 else rng.choice((1, 2, 2))
    prefs = []
    for _ in range(n):
        roll = rng.random()
        prefs.append(
            RolePreference.SERVER
            if roll < 0.1
            else RolePreference.AGENT
            if roll < 0.2
            else RolePreference.AUTO
        )
    registration = rng.choice(("198.18.0.100", ""))
    dialect = rng.choice(("postgres", "mysql"))
    boot_at = tuple(rng.uniform(0.0, 3.0) for _ in range(n))
    k3s_faults = tuple(
        rng.choice(("never_ready", "crash_loop")) if rng.random() < 0.04 else "none"
        for _ in range(n)
    )
    slow_stops = tuple(rng.random() < 0.3 for _ in range(n))
    faults = []
    t = FAULT_START if rng.random() < 0.85 else rng.uniform(0.0, 10.0)  # some hit formation
    for _ in range(rng.randint(1, 4)):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        faults.append(_fault(rng, kind, t, n))
        t += rng.uniform(0.0, 25.0)
    extra = random.Random(seed * 7919 + 1)
    for kind, p in later_kinds(generation):
        if extra.random() < p:
            at = FAULT_START + extra.uniform(0.0, 40.0)
            faults.append(_fault(extra, kind, at, n))
    faults.sort(key=lambda f: f.at)
    return Plan(
        seed=seed,
        machines=n,
        count=count,
        preferences=tuple(prefs),
        registration=registration,
        dialect=dialect,
        boot_at=boot_at,
        k3s_faults=k3s_faults,
        slow_stops=slow_stops,
        faults=tuple(faults),
    )


def _fault(rng: random.Random, kind: str, at: float, n: int) -> Fault:
    one = rng.randrange(n)
    if kind == "crash":
        return Fault(at, kind, one, rng.uniform(5.0, 60.0) if rng.random() < 0.8 else math.inf)
    if kind == "freeze":
        return Fault(at, kind, one, rng.uniform(2.0, 40.0))
    if kind in ("daemon_kill", "daemon_restart"):
        return Fault(at, kind, one)
    if kind == "db_down":
        who = None if rng.random() < 0.5 else one
        return Fault(at, kind, who, rng.uniform(3.0, 60.0), how=rng.choice(("refuse", "blackhole")))
    if kind == "partition":
        return Fault(at, kind, one, rng.uniform(3.0, 40.0), how="blackhole")
    if kind == "db_slow":
        who = None if rng.random() < 0.5 else one
        return Fault(at, kind, who, rng.uniform(5.0, 40.0), arg=rng.choice((1.0, 5.0, 15.0)))
    if kind == "clock_step":
        return Fault(at, kind, None, arg=rng.choice((-3600.0, -30.0, -5.0, 5.0, 30.0, 3600.0)))
    if kind == "k3s_broken":
        return Fault(at, kind, one, how=rng.choice(("never_ready", "crash_loop")))
    if kind == "die_mid_write":
        return Fault(at, kind, one, rng.uniform(20.0, 60.0))
    if kind == "systemd_restart":
        return Fault(at, kind, one, arg=rng.uniform(0.5, 3.0))
    if kind == "rollout":
        return Fault(at, kind, None, how="good" if rng.random() < 0.8 else "bad")
    if kind == "maintenance":
        return Fault(at, kind, one, rng.uniform(10.0, 60.0))
    if kind == "pause":
        return Fault(at, kind, None, rng.uniform(5.0, 40.0))
    how = rng.choice(("count", "labels"))
    arg = float(rng.randint(1, 3)) if how == "count" else float(rng.randint(1, 99))
    return Fault(at, "sighup", None, arg=arg, how=how)
