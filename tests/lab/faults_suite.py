"""Fault scenarios for a k3snoded fleet in the lab, and the invariants sampled while they run.

    lab = Lab(4, with_db=True).up()
    fleet, db = formed_fleet(lab)                 # 3 server-capable + 1 agent-only, 2 servers
    outcome = run(SCENARIOS["kill-vip-holder"], fleet, db)
    outcome.recovery, outcome.violations          # seconds; [] when every invariant held

A scenario is a function ``(fleet, sampler) -> seconds``: it injects one fault into a formed
fleet and returns the time from the injection to the fleet converged again (every live machine
ready in its role, ``servers.count`` ready servers, exactly one VIP holder). ``run`` wraps it in
an :class:`InvariantSampler` and the end-of-run checks.

Invariants: tests/lab/invariants.py (docs/reliability.md explains each).
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lab import dbs
from tests.lab.fleet import PYTHON, Fleet, FleetNode
from tests.lab.invariants import (
    InvariantSampler,
    Outcome,
    live_statuses,
    ready_servers,
    recovered,
    wait_recovered,
)
from tests.lab.netns import Lab

Scenario = Callable[[Fleet, InvariantSampler], float]

RECOVER = 60.0  # seconds any scenario may take to recover before it fails


def _roles(fleet: Fleet, exclude: set[str]) -> dict[str, str]:
    return {n: s["node"]["role"] for n, s in live_statuses(fleet, exclude).items() if s}


def _kill_machine(node: FleetNode) -> None:
    """SIGKILL every process on the machine (daemon, k3s, anything else), by PID."""
    for pid in node.machine.pids():
        node.machine.kill(pid)
    if node.proc is not None:
        node.proc.wait(timeout=10)


def _holder(sampler: InvariantSampler) -> str:
    holders = sampler.holders()
    if len(holders) != 1:
        raise AssertionError(f"want one VIP holder before the fault, got {holders}")
    return holders[0]


def kill_coordinator(fleet: Fleet, sampler: InvariantSampler) -> float:
    """SIGKILL of the coordinator's daemon, not restarted: its k3s is orphaned, it is replaced."""
    st = fleet.statuses()
    coord = next(n for n, s in st.items() if s and s.get("coordinator") == n)
    sampler.notes["victim"] = f"{coord} ({st[coord]['node']['role']})"  # type: ignore[index]
    t0 = time.monotonic()
    fleet.node(coord).kill()
    sampler.excluded.add(coord)
    return wait_recovered(fleet, sampler, t0, exclude=sampler.excluded, timeout=RECOVER)


def kill_vip_holder(fleet: Fleet, sampler: InvariantSampler) -> float:
    """Every process on the VIP holder SIGKILLed (link stays up), not restarted: replaced."""
    victim = _holder(sampler)
    sampler.notes["victim"] = victim
    t0 = time.monotonic()
    _kill_machine(fleet.node(victim))
    sampler.excluded.add(victim)
    return wait_recovered(fleet, sampler, t0, exclude=sampler.excluded, timeout=RECOVER)


def kill_agent(fleet: Fleet, sampler: InvariantSampler) -> float:
    """Every process on an agent-only machine SIGKILLed, the daemon restarted at once (as
    systemd would): the agent is back, no role changed."""
    node = next(n for n in fleet.nodes if n.agent_only)
    roles = _roles(fleet, set())
    t0 = time.monotonic()
    _kill_machine(node)
    node.start()
    took = wait_recovered(fleet, sampler, t0, exclude=set(), timeout=RECOVER)
    if _roles(fleet, set()) != roles:
        sampler.violation(f"roles changed: {roles} -> {_roles(fleet, set())}")
    return took


def crash_vip_holder(fleet: Fleet, sampler: InvariantSampler) -> float:
    """A crash of the VIP holder: every process SIGKILLed and its eth0 down (DESIGN §4's
    "SIGKILL + link down"), not restarted: replaced."""
    victim = _holder(sampler)
    sampler.notes["victim"] = victim
    t0 = time.monotonic()
    _kill_machine(fleet.node(victim))
    fleet.node(victim).machine.link_down()
    sampler.excluded.add(victim)
    return wait_recovered(fleet, sampler, t0, exclude=sampler.excluded, timeout=RECOVER)


def _freeze(fleet: Fleet, sampler: InvariantSampler, victim: str, seconds: float = 30.0) -> float:
    machine = fleet.node(victim).machine
    pids = machine.pids()
    sampler.notes["victim"] = victim
    t0 = time.monotonic()
    try:
        for pid in pids:
            machine.freeze(pid)
        took = wait_recovered(fleet, sampler, t0, exclude={victim}, timeout=seconds)
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    finally:
        for pid in pids:
            machine.thaw(pid)
    t1 = time.monotonic()
    sampler.notes["thaw_to_converged_s"] = round(
        wait_recovered(fleet, sampler, t1, exclude=set(), timeout=RECOVER), 2
    )
    return took


def freeze_server(fleet: Fleet, sampler: InvariantSampler) -> float:
    """SIGSTOP of a server that does not hold the VIP (daemon and k3s) for 30 s, then SIGCONT.
    Returns the time to replace it; SIGCONT → the whole fleet converged goes to notes."""
    holder = _holder(sampler)
    st = live_statuses(fleet, set())
    victim = sorted(ready_servers(st) - {holder})[0]
    return _freeze(fleet, sampler, victim)


def freeze_vip_holder(fleet: Fleet, sampler: InvariantSampler) -> float:
    """SIGSTOP of the VIP holder (daemon and k3s) for 30 s, then SIGCONT."""
    return _freeze(fleet, sampler, _holder(sampler))


def datastore_outage(fleet: Fleet, sampler: InvariantSampler, seconds: float = 60.0) -> float:
    """The datastore stopped for 60 s: no role may change. Returns the time from its restart
    to the fleet converged."""
    lab, kind = fleet.lab, sampler.db.kind
    roles = _roles(fleet, set())
    dbs.stop(lab, kind)
    t0 = time.monotonic()
    changed = 0
    while time.monotonic() < t0 + seconds:
        now = _roles(fleet, set())
        if any(now.get(n, r) != r for n, r in roles.items()):
            changed += 1
            if changed == 1:
                sampler.violation(f"role changed during the outage: {roles} -> {now}")
        time.sleep(2.0)
    dbs.start(lab, kind)
    t1 = time.monotonic()
    took = wait_recovered(fleet, sampler, t1, exclude=set(), timeout=RECOVER)
    if _roles(fleet, set()) != roles:
        sampler.violation(f"roles changed after the outage: {roles} -> {_roles(fleet, set())}")
    sampler.notes["k3s_restarts"] = sum(
        s["k3s"].get("restarts", 0) for s in live_statuses(fleet, set()).values() if s
    )
    return took


def partition_server(fleet: Fleet, sampler: InvariantSampler, seconds: float = 20.0) -> float:
    """The VIP holder's switch port cut for 20 s (it sees only silence), then healed. Returns
    the time to replace it; heal → whole fleet converged goes to notes."""
    victim = _holder(sampler)
    machine = fleet.node(victim).machine
    sampler.notes["victim"] = victim
    t0 = time.monotonic()
    sampler.isolated.add(victim)
    machine.partition()
    try:
        took = wait_recovered(fleet, sampler, t0, exclude={victim}, timeout=RECOVER)
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    finally:
        machine.heal()
        sampler.isolated.discard(victim)
    t1 = time.monotonic()
    sampler.notes["heal_to_converged_s"] = round(
        wait_recovered(fleet, sampler, t1, exclude=set(), timeout=RECOVER), 2
    )
    return took


def packet_loss(fleet: Fleet, sampler: InvariantSampler, seconds: float = 30.0) -> float:
    """20 % random loss both ways on every fleet machine for 30 s (no delay: no netem here).
    Returns the time from clearing it to converged; notes how often it was not converged."""
    roles = _roles(fleet, set())
    for n in fleet.nodes:
        n.machine.loss(20)
    t0 = time.monotonic()
    polls = bad = 0
    try:
        while time.monotonic() < t0 + seconds:
            polls += 1
            bad += not recovered(fleet, sampler, set())
            time.sleep(0.5)
    finally:
        for n in fleet.nodes:
            n.machine.clear_loss()
    t1 = time.monotonic()
    took = wait_recovered(fleet, sampler, t1, exclude=set(), timeout=RECOVER)
    sampler.notes["not_converged_polls"] = f"{bad}/{polls}"
    if _roles(fleet, set()) != roles:
        sampler.violation(f"roles changed under loss: {roles} -> {_roles(fleet, set())}")
    return took


def _wipe_datastore(db: dbs.Database) -> None:
    list_sql = (
        "SHOW TABLES"
        if db.kind == "mysql"
        else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    code = (
        f"c={db.python_connect_source()};cur=c.cursor();cur.execute({list_sql!r});"
        "[cur.execute('DROP TABLE ' + t) for (t,) in cur.fetchall()];c.commit()"
    )
    db.machine.run([str(PYTHON), "-c", code], timeout=30)


def cold_boot(fleet: Fleet, sampler: InvariantSampler) -> float:
    """Every machine stopped, its disk and the datastore wiped, then all started at the same
    instant: one bootstrap, one CA. Returns start → converged."""
    sampler.fresh_cluster = True
    fleet.stop_all()
    for n in fleet.nodes:
        n.machine.restart()
        for d in (n.state_dir, n.data_dir, n.root, n.run_dir):
            _rmtree(d)
        n.root.mkdir()
    _wipe_datastore(sampler.db)
    t0 = time.monotonic()
    fleet.start_all()
    return wait_recovered(fleet, sampler, t0, exclude=set(), timeout=90)


def rolling_restart(fleet: Fleet, sampler: InvariantSampler) -> float:
    """Each machine in turn restarted (every process ended, eth0 reset, daemon started), the
    fleet converged before the next. Returns the slowest step; all steps go to notes."""
    steps = []
    for n in fleet.nodes:
        t0 = time.monotonic()
        n.machine.restart()
        n.start()
        steps.append(wait_recovered(fleet, sampler, t0, exclude=set(), timeout=RECOVER))
    sampler.notes["steps_s"] = [round(x, 2) for x in steps]
    return max(steps)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


SCENARIOS: dict[str, Scenario] = {
    "kill-coordinator": kill_coordinator,
    "kill-vip-holder": kill_vip_holder,
    "crash-vip-holder": crash_vip_holder,
    "kill-agent": kill_agent,
    "freeze-server-30s": freeze_server,
    "freeze-vip-holder-30s": freeze_vip_holder,
    "datastore-down-60s": datastore_outage,
    "partition-server": partition_server,
    "loss-20pct": packet_loss,
    "cold-boot": cold_boot,
    "rolling-restart": rolling_restart,
}


# ---- running ----------------------------------------------------------------------------------
def formed_fleet(
    lab: Lab, kind: dbs.Kind = "postgres", **fleet_kw: Any
) -> tuple[Fleet, dbs.Database]:
    """The database and a fleet of 3 server-capable + 1 agent-only machines, converged."""
    db = dbs.start(lab, kind)
    fleet = Fleet(lab, endpoint=db.endpoint, eligible=3, agents=1, servers=2, **fleet_kw)
    fleet.start_all()
    fleet.wait(
        lambda st: fleet.converged(st) and len(fleet.vip_holders()) == 1,
        timeout=90,
        what="fleet formed with one VIP holder",
    )
    return fleet, db


def run(name: str, fleet: Fleet, db: dbs.Database) -> Outcome:
    """One scenario on a formed fleet, with the invariants sampled throughout."""
    sampler = InvariantSampler(fleet, db)
    sampler.start()
    try:
        took = SCENARIOS[name](fleet, sampler)
        sampler.finish()
    finally:
        sampler.stop()
    return Outcome(name, took, list(sampler.violations), dict(sampler.notes))


def summary(times: list[float]) -> str:
    if not times:
        return "-"
    return f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})"


__all__ = ["SCENARIOS", "InvariantSampler", "Outcome", "formed_fleet", "run"]
