"""Planned operations in the lab (issue 15): switchover, maintenance on and off, pause and
resume, each asked the way the CLI asks (the control socket's POST /v1/ops), on a fleet of 4
machines that may be servers (servers.count 2) on PostgreSQL, with a client probing the
registration address every 20 ms and the fault suite's invariants sampled throughout
(tests/lab/invariants.py: one VIP holder, servers.count restored, one CA, no kine rows lost,
no token leaked)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from k3snoded.api import request_ops
from tests.lab import dbs
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.fleet import Fleet, Status
from tests.lab.invariants import ADVERT_INTERVAL, TOLERANCE, InvariantSampler
from tests.lab.probe import longest_gap
from tests.lab.upgrade_kit import Probe

__all__ = ["lab_factory"]

require_root()
pytestmark = pytest.mark.lab


def _setup(lab_factory: LabFactory) -> tuple[Fleet, dbs.Database, dict[str, Status | None]]:
    lab = lab_factory(4, with_db=True, with_client=True)
    db = dbs.start(lab, "postgres")
    fleet = Fleet(
        lab, endpoint=db.endpoint, eligible=4, agents=0, servers=2,
        fake_env={"K3S_FAKE_SHUTDOWN_DELAY": "1"},
    )  # fmt: skip
    fleet.start_all()
    st = fleet.wait(
        lambda st: fleet.converged(st) and len(fleet.vip_holders()) == 1,
        timeout=120,
        what="fleet formed, VIP held",
    )
    return fleet, db, st


def _ask(fleet: Fleet, on: str, req: dict[str, Any], limit: float = 120.0) -> dict[str, Any]:
    """What ``k3snoded <action>`` run on machine ``on`` sends and gets back."""
    return asyncio.run(request_ops(fleet.node(on).socket, {"by": "the lab test", **req}, limit))


def _roles(st: dict[str, Status | None]) -> dict[str, str]:
    return {n: (s or {}).get("node", {}).get("role", "?") for n, s in st.items()}


def _pids(st: dict[str, Status | None]) -> dict[str, int | None]:
    return {n: (s or {}).get("k3s", {}).get("pid") for n, s in st.items()}


def _servers(st: dict[str, Status | None]) -> list[str]:
    return sorted(n for n, r in _roles(st).items() if r == "server")


def test_switchover_moves_the_vip_to_the_named_server_without_a_gap(
    lab_factory: LabFactory,
) -> None:
    fleet, db, st = _setup(lab_factory)
    holder = fleet.vip_holders()[0]
    target = next(n for n in _servers(st) if n != holder)
    bystander = next(n for n in sorted(st) if n not in (holder, target))
    # The holder hands the VIP only to a server its member table shows ready (read every
    # cycle): the target's readiness reaches it a few seconds after the target's own status.
    fleet.wait(
        lambda st: any(p["name"] == target and p["ready"] and p["role"] == "server"
                       for p in (st[holder] or {}).get("peers", [])),
        timeout=30,
        what=f"{holder} sees {target} ready",
    )  # fmt: skip
    roles, pids = _roles(st), _pids(st)
    sampler = InvariantSampler(fleet, db)
    sampler.start()
    probe = Probe(fleet.lab)
    probe.start()
    time.sleep(1.0)
    # Refused: the machine named is not a server; the VIP stays where it is.
    answer = _ask(fleet, bystander, {"action": "switchover", "to": bystander})
    assert not answer["ok"] and "not a ready server" in answer["why"], answer
    assert fleet.vip_holders() == [holder]
    # Asked on a machine that does not hold the VIP: passed on to the holder (signed request).
    t0 = time.monotonic()
    answer = _ask(fleet, bystander, {"action": "switchover", "to": target})
    assert answer["ok"], answer
    assert fleet.vip_holders() == [target]
    time.sleep(3.0)  # it stays there: the old holder does not take it back
    assert fleet.vip_holders() == [target]
    samples = probe.stop()
    sampler.stop()
    sampler.finish()
    assert sampler.violations == [], sampler.violations
    assert sampler.moves == 1
    assert sampler.max_overlap <= ADVERT_INTERVAL + TOLERANCE
    gap = longest_gap(samples, t0)
    assert gap < 0.5, f"the registration address went unanswered for {gap:.3f} s"
    after = fleet.statuses()
    assert _roles(after) == roles  # a switchover changes no role ...
    assert _pids(after) == pids  # ... and restarts no k3s
    rec = next(
        (s["operations"] or {}).get("switchover") for s in after.values()
        if s is not None and s.get("coordinator") == s["node"]["name"]
    )  # fmt: skip
    assert rec is not None and rec["from"] == holder and rec["to"] == target, rec
    assert "the lab test" in rec["by"]
    print(f"switchover {holder} -> {target}: longest gap {gap * 1000:.0f} ms, "
          f"overlap {sampler.max_overlap * 1000:.0f} ms")  # fmt: skip


def test_maintenance_hands_over_the_vip_and_the_seat_then_returns_without_a_flap(
    lab_factory: LabFactory,
) -> None:
    fleet, db, st = _setup(lab_factory)
    victim = fleet.vip_holders()[0]  # a server holding the VIP: the hardest one to take out
    other = next(n for n in _servers(st) if n != victim)
    spares = sorted(n for n in st if n not in (victim, other))
    pids = _pids(st)
    sampler = InvariantSampler(fleet, db)
    sampler.start()
    probe = Probe(fleet.lab)
    probe.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    answer = _ask(fleet, victim, {"action": "maintenance", "on": True, "node": victim})
    assert answer["ok"], answer

    def out_of_service(st: dict[str, Status | None]) -> bool:
        s = st.get(victim)
        ready = [n for n in _servers(st) if n != victim and (st[n] or {})["k3s"]["ready"]]
        return (
            s is not None
            and s["operations"]["maintenance_here"] == "in maintenance"
            and s["k3s"]["pid"] is None
            and len(ready) == 2
        )

    st = fleet.wait(out_of_service, timeout=120, what=f"{victim} handed over and out of service")
    assert victim not in fleet.vip_holders() and len(fleet.vip_holders()) == 1
    new_servers = [n for n in _servers(st) if n != victim]
    assert other in new_servers  # the healthy server kept its seat ...
    promoted = next(n for n in new_servers if n != other)
    assert promoted in spares  # ... and a spare took the victim's
    assert st[other]["k3s"]["pid"] == pids[other]  # type: ignore[index]
    assert (st[victim] or {})["node"]["role"] == "none"
    assert victim in (st[other] or {})["operations"]["maintenance"]
    # Back: k3s runs again on the victim as an agent; no seat or VIP taken back (no flap).
    t1 = time.monotonic()
    answer = _ask(fleet, other, {"action": "maintenance", "on": False, "node": victim})
    assert answer["ok"], answer
    st = fleet.wait(
        lambda st: (
            (st.get(victim) or {}).get("k3s", {}).get("ready") is True
            and not (st.get(victim) or {})["operations"]["maintenance_here"]
        ),
        timeout=90,
        what=f"{victim} back in service",
    )
    time.sleep(3.0)
    st = fleet.statuses()
    assert _roles(st)[victim] == "agent"
    assert _servers(st) == sorted([other, promoted])
    assert victim not in fleet.vip_holders()
    samples = probe.stop()
    sampler.stop()
    sampler.finish()
    assert sampler.violations == [], sampler.violations
    gap = longest_gap(samples, t0)
    assert gap < 1.0, f"the registration address went unanswered for {gap:.3f} s"
    assert longest_gap(samples, t1) < 1.0
    # k3s restarts: only on the victim (stopped, started as an agent) and the promoted spare.
    assert {n for n, p in _pids(st).items() if p != pids[n]} == {victim, promoted}
    print(f"maintenance of {victim}: seat to {promoted}, longest gap {gap * 1000:.0f} ms")


def test_pause_freezes_roles_and_resume_replaces_a_dead_server(lab_factory: LabFactory) -> None:
    fleet, db, st = _setup(lab_factory)
    holder = fleet.vip_holders()[0]
    dead = next(n for n in _servers(st) if n != holder)  # not the holder: the VIP stays up
    roles = _roles(st)
    sampler = InvariantSampler(fleet, db)
    sampler.start()
    answer = _ask(fleet, holder, {"action": "pause"})
    assert answer["ok"], answer
    fleet.wait(
        lambda st: all((s or {}).get("operations", {}).get("paused") for s in st.values()),
        timeout=40,
        what="every machine sees the pause",
    )
    fleet.node(dead).stop()  # the daemon stops and its k3s with it
    sampler.excluded.add(dead)
    # Long past dead_after (10 s) and a decision cycle: nobody is promoted while paused.
    deadline = time.monotonic() + 25.0
    while time.monotonic() < deadline:
        live = {n: s for n, s in fleet.statuses().items() if n != dead}
        assert _roles(live) == {n: r for n, r in roles.items() if n != dead}
        assert fleet.vip_holders() == [holder]  # the VIP still follows health
        time.sleep(1.0)
    answer = _ask(fleet, holder, {"action": "resume"})
    assert answer["ok"], answer
    st = fleet.wait(
        lambda st: (
            len([n for n in _servers(st) if n != dead and (st[n] or {})["k3s"]["ready"]]) == 2
        ),
        timeout=90,
        what="a replacement server once resumed",
    )
    sampler.stop()
    sampler.finish()
    assert sampler.violations == [], sampler.violations
    assert len(fleet.vip_holders()) == 1
