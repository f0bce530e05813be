"""Rolling k3s upgrades in the lab (issue 15): 3 servers + 2 agents on PostgreSQL, stand-in
releases from a mirror inside the lab, a client probing the registration address every 20 ms,
and the fault suite's invariants sampled throughout (tests/lab/invariants.py)."""

from __future__ import annotations

import time

import pytest

from tests.lab import dbs
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.fleet import Fleet, Status
from tests.lab.invariants import InvariantSampler
from tests.lab.probe import longest_gap
from tests.lab.upgrade_kit import (
    BAD,
    NEW,
    OLD,
    Probe,
    Watch,
    rollout_of,
    set_version,
    upgrade_fleet,
    version_of,
)

__all__ = ["lab_factory"]

require_root()
pytestmark = pytest.mark.lab


def _setup(lab_factory: LabFactory) -> tuple[Fleet, dbs.Database]:
    lab = lab_factory(5, with_db=True, with_client=True)
    db = dbs.start(lab, "postgres")
    return upgrade_fleet(lab, db, eligible=3, agents=2, servers=3), db


def _all_on(version: str):  # type: ignore[no-untyped-def]
    def check(st: dict[str, Status | None]) -> bool:
        return all(s is not None and version_of(s) == version and s["k3s"]["ready"]
                   for s in st.values())  # fmt: skip

    return check


def test_rolling_upgrade_keeps_the_registration_address_answering(
    lab_factory: LabFactory,
) -> None:
    fleet, db = _setup(lab_factory)
    assert all(version_of(s) == OLD for s in fleet.statuses().values())
    sampler = InvariantSampler(fleet, db)
    sampler.start()
    probe = Probe(fleet.lab)
    probe.start()
    watch = Watch(fleet)
    watch.start()
    time.sleep(2.0)
    t0 = time.monotonic()
    set_version(fleet, NEW)
    fleet.wait(_all_on(NEW), timeout=240, what=f"every machine on {NEW}")
    fleet.wait(
        lambda st: (rollout_of(fleet) or {}).get("state") == "done", timeout=30,
        what="the rollout done",
    )  # fmt: skip
    took = time.monotonic() - t0
    time.sleep(1.0)
    watch.stop()
    samples = probe.stop()
    sampler.stop()
    sampler.finish()
    assert sampler.violations == [], sampler.violations
    # k3s restarted exactly once on every machine; the skew rule held throughout.
    assert watch.restarts() == {n.name: 1 for n in fleet.nodes}, watch.pids
    assert watch.skew == []
    gap = longest_gap(samples, t0)
    assert gap < 1.0, f"the registration address went unanswered for {gap:.3f} s"
    r = rollout_of(fleet)
    assert r is not None and r["target"] == NEW
    assert all(m["version"] == NEW and m["step"] == "done" for m in r["machines"]), r
    print(f"rollout {took:.1f} s, longest gap {gap * 1000:.0f} ms, "
          f"VIP moves {sampler.moves}")  # fmt: skip


def test_a_failed_upgrade_halts_and_rolls_back_with_the_fleet_serving(
    lab_factory: LabFactory,
) -> None:
    fleet, db = _setup(lab_factory)
    sampler = InvariantSampler(fleet, db)
    sampler.start()
    probe = Probe(fleet.lab)
    probe.start()
    before = {n: s["k3s"]["pid"] for n, s in fleet.statuses().items() if s}
    t0 = time.monotonic()
    set_version(fleet, BAD)  # a build that panics at start
    fleet.wait(
        lambda st: (rollout_of(fleet) or {}).get("state") == "halted", timeout=120,
        what="the rollout halted",
    )  # fmt: skip
    r = rollout_of(fleet)
    assert r is not None
    victim = r["halted_node"]
    assert "rolled back to " + OLD in r["halted_error"], r
    st = fleet.wait(_all_on(OLD), timeout=60, what=f"every machine back on {OLD}")
    samples = probe.stop()
    sampler.stop()
    sampler.finish()
    assert sampler.violations == [], sampler.violations
    # Only the victim was touched (one machine at a time): every other k3s kept its pid.
    after = {n: s["k3s"]["pid"] for n, s in st.items() if s}
    assert {n for n in after if after[n] != before[n]} == {victim}
    assert st[victim]["node"]["role"] == "server"  # type: ignore[index]
    # Tried once, rolled back once: a failed machine is not upgraded again.
    log = fleet.node(victim).log()
    assert log.count("rolling back to " + OLD) == 1, log[-3000:]
    gap = longest_gap(samples, t0)
    assert gap < 1.0, f"the registration address went unanswered for {gap:.3f} s"
    time.sleep(5)  # halted stays halted: nobody else is tried
    r = rollout_of(fleet)
    assert r is not None and r["state"] == "halted" and r["grants"] == []
