"""The long fault set (issue 7), behind ``make soak``: every scenario of faults_suite on a fresh
lab (4 machines + PostgreSQL; 3 server-capable + 1 agent-only, servers.count 2), the invariants
sampled throughout, 0 violations asserted, and the recovery target asserted where DESIGN §4 sets
one. Figures and the not-yet-survived list: docs/reliability.md; the table: bench/faults.py.
"""

from __future__ import annotations

import pytest

from tests.lab import faults_suite
from tests.lab.faults_suite import Outcome, formed_fleet, run
from tests.lab.fixtures import LabFactory, lab_factory, require_root

__all__ = ["lab_factory"]

require_root()
pytestmark = [pytest.mark.soak, pytest.mark.lab]

DEAD_AFTER = 10.0  # coordination.dead_after, the default
REPLACED_WITHIN = DEAD_AFTER + 5.0  # DESIGN §4: dead server replaced ≤ heartbeat window + 5 s
BACK_WITHIN = 15.0  # issue 7: "recovery within seconds" after a datastore outage / a restart


def _run(lab_factory: LabFactory, name: str) -> Outcome:
    lab = lab_factory(4, with_db=True)
    fleet, db = formed_fleet(lab)
    out = run(name, fleet, db)
    print(f"\n{name}: recovered in {out.recovery:.2f} s, violations {out.violations}, {out.notes}")
    return out


STALE_VIP_BOUND = 2.0  # the holder's VIP kernel lifetime (1 s) + the kernel's expiry granularity


def _double_vip(out: Outcome) -> list[str]:
    return [v for v in out.violations if v.startswith("VIP on ")]


def _all_but_stale_vip(out: Outcome) -> None:
    """Every invariant held except the known stale-VIP window of a holder whose processes died
    or froze with its kernel and link alive (xfail test below); that window stays bounded."""
    assert [v for v in out.violations if v not in _double_vip(out)] == [], out
    assert out.notes["max_overlap_s"] <= STALE_VIP_BOUND, out


@pytest.mark.timeout(240)
def test_coordinator_daemon_killed_is_replaced(lab_factory: LabFactory) -> None:
    """The coordinator's daemon only (its k3s is orphaned and keeps running). The coordinator
    usually holds the VIP too: its VIP guard (k3snoded/vip.py) removes it the moment the daemon
    dies, so there is no double holder."""
    out = _run(lab_factory, "kill-coordinator")
    assert out.violations == [], out
    assert out.recovery <= REPLACED_WITHIN, out


@pytest.mark.timeout(240)
def test_vip_holder_killed_is_replaced(lab_factory: LabFactory) -> None:
    """Every process on the holder SIGKILLed, its link up. The double-VIP window is asserted
    separately (next test)."""
    out = _run(lab_factory, "kill-vip-holder")
    _all_but_stale_vip(out)
    assert out.recovery <= REPLACED_WITHIN, out


@pytest.mark.timeout(240)
@pytest.mark.xfail(
    strict=True,
    reason="k3snoded/vrrp/speaker.py: a master's VIP carries a 1 s kernel lifetime (the kernel's "
    "granularity), a backup takes over after the 0.36 s master-down interval: when every "
    "process of the holder dies at once (the VIP guard included) but its kernel and link live, "
    "both machines hold the VIP for ~0.45 s (> advert + tolerance). A killed daemon alone is "
    "covered by the guard. See docs/reliability.md",
)
def test_vip_holder_killed_no_double_holder(lab_factory: LabFactory) -> None:
    out = _run(lab_factory, "kill-vip-holder")
    assert _double_vip(out) == [], out


@pytest.mark.timeout(240)
def test_vip_holder_crash_with_link_down_is_replaced(lab_factory: LabFactory) -> None:
    out = _run(lab_factory, "crash-vip-holder")
    assert out.violations == [], out
    assert out.recovery <= REPLACED_WITHIN, out


@pytest.mark.timeout(240)
def test_agent_killed_and_restarted_rejoins(lab_factory: LabFactory) -> None:
    out = _run(lab_factory, "kill-agent")
    assert out.violations == [], out
    assert out.recovery <= BACK_WITHIN, out


@pytest.mark.timeout(300)
def test_server_frozen_30s_is_replaced_and_rejoins(lab_factory: LabFactory) -> None:
    out = _run(lab_factory, "freeze-server-30s")
    assert out.violations == [], out
    assert out.recovery <= REPLACED_WITHIN, out


@pytest.mark.timeout(300)
def test_vip_holder_frozen_30s_is_replaced_and_rejoins(lab_factory: LabFactory) -> None:
    out = _run(lab_factory, "freeze-vip-holder-30s")
    _all_but_stale_vip(out)
    assert out.recovery <= REPLACED_WITHIN, out


@pytest.mark.timeout(360)
def test_datastore_down_60s_changes_nothing_and_recovers(lab_factory: LabFactory) -> None:
    out = _run(lab_factory, "datastore-down-60s")
    assert out.violations == [], out
    assert out.recovery <= BACK_WITHIN, out


@pytest.mark.timeout(300)
def test_server_partitioned_is_replaced_and_rejoins_after_heal(lab_factory: LabFactory) -> None:
    out = _run(lab_factory, "partition-server")
    assert out.violations == [], out
    assert out.recovery <= REPLACED_WITHIN, out


@pytest.mark.timeout(300)
def test_20pct_packet_loss_everywhere(lab_factory: LabFactory) -> None:
    out = _run(lab_factory, "loss-20pct")
    assert out.violations == [], out


@pytest.mark.timeout(600)
def test_rolling_restart_of_every_machine(lab_factory: LabFactory) -> None:
    out = _run(lab_factory, "rolling-restart")
    assert out.violations == [], out


COLD_BOOTS = 20


@pytest.mark.timeout(COLD_BOOTS * 90 + 120)
def test_cold_boot_20_times_one_bootstrap(lab_factory: LabFactory) -> None:
    """All machines wiped and started at the same instant on an empty datastore, 20 times: one
    bootstrap and one cluster CA every time (DESIGN §4: 0 double bootstraps in 20 runs)."""
    lab = lab_factory(4, with_db=True)
    fleet, db = formed_fleet(lab)
    outs = [run("cold-boot", fleet, db) for _ in range(COLD_BOOTS)]
    bad = [(i, o.violations) for i, o in enumerate(outs) if o.violations]
    assert bad == [], bad
    print("cold boot -> converged:", faults_suite.summary([o.recovery for o in outs]))
