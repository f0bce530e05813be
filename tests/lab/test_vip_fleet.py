"""The VIP with the whole daemon (issue: the registration address): it follows the health of the
local k3s API, never sits on an agent, and is never held twice beyond one advert interval.
The speaker alone (and keepalived interop) is tested in test_vrrp*.py.
"""

from __future__ import annotations

import time

import pytest

from tests.lab import dbs
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.fleet import VIP, Fleet
from tests.lab.test_vrrp_support import Sampler

__all__ = ["lab_factory"]

require_root()
pytestmark = pytest.mark.lab


def _sampler(fleet: Fleet) -> Sampler:
    return Sampler([n.machine for n in fleet.nodes], max_seconds=300.0)


def _check(fleet: Fleet, sampler: Sampler) -> None:
    """Never two holders beyond one advert interval (plus what sampling blurs); never an
    agent holding it."""
    assert sampler.error is None
    allowed = 0.1 + 2 * sampler.max_gap()
    longest = sampler.longest_overlap()
    assert longest <= allowed, f"two holders for {longest:.2f} s (allowed {allowed:.2f} s)"
    assert not [n.name for n in fleet.nodes if n.agent_only and sampler.ever_held_by(n.name)]


def test_vip_leaves_an_unhealthy_api_and_does_not_come_back(lab_factory: LabFactory) -> None:
    """The holder is cut off from the datastore: its k3s keeps running and its static /ping
    keeps answering, but its apiserver's /readyz (the datastore check) fails, so the VIP moves
    to a healthy server; k3s is not killed, and the VIP stays put when it recovers."""
    lab = lab_factory(4, with_db=True)
    db = dbs.start(lab, "postgres")
    # A renew deadline longer than the cut: the test is about the VIP, not the k3s leader's
    # exit (tests/fake_k3s covers that).
    fleet = Fleet(
        lab,
        endpoint=db.endpoint,
        eligible=3,
        agents=1,
        servers=2,
        fake_env={"K3S_FAKE_DATASTORE_LOSS_EXIT": "60"},
    )
    with _sampler(fleet) as sampler:
        fleet.start_all()
        st = fleet.wait(
            lambda st: fleet.converged(st) and len(fleet.vip_holders()) == 1,
            timeout=90,
            what="fleet formed, VIP held",
        )
        holder = fleet.vip_holders()[0]
        k3s_pid = st[holder]["k3s"]["pid"]  # type: ignore[index]
        lab.split([fleet.node(holder).machine], [lab.machine("db")])
        t0 = time.monotonic()
        deadline = t0 + 15
        while time.monotonic() < deadline and fleet.vip_holders() in ([holder], []):
            time.sleep(0.05)
        moved = fleet.vip_holders()
        assert len(moved) == 1 and moved[0] != holder, f"VIP still on {moved}"
        assert fleet.node(moved[0]).status()["node"]["role"] == "server"  # type: ignore[index]
        status = fleet.node(holder).status()
        assert status is not None and status["k3s"]["pid"] == k3s_pid, "k3s must not be killed"
        assert not status["k3s"]["ready"]
        # Back on the datastore: healthy again, no preemption, the address stays where it is.
        lab.join()
        fleet.wait(
            lambda st: bool((st[holder] or {}).get("k3s", {}).get("ready")),
            timeout=40,
            what="old holder healthy again",
        )
        time.sleep(2)
        assert fleet.vip_holders() == moved
        assert fleet.node(holder).status()["k3s"]["pid"] == k3s_pid  # type: ignore[index]
    _check(fleet, sampler)


def test_a_killed_daemon_leaves_no_stale_vip(lab_factory: LabFactory) -> None:
    """SIGKILL of the holder's daemon (its k3s keeps running): the VIP guard removes the
    address at once instead of leaving it for its 1 s kernel lifetime beside the new holder."""
    lab = lab_factory(3, with_db=True)
    db = dbs.start(lab, "postgres")
    fleet = Fleet(lab, endpoint=db.endpoint, eligible=3, agents=0, servers=2)
    fleet.start_all()
    fleet.wait(
        lambda st: fleet.converged(st) and len(fleet.vip_holders()) == 1,
        timeout=90,
        what="fleet formed, VIP held",
    )
    holder = fleet.node(fleet.vip_holders()[0])
    with _sampler(fleet) as sampler:
        t0 = time.monotonic()
        holder.kill()
        gone_after = None
        while time.monotonic() - t0 < 5:
            if VIP not in holder.machine.ipv4_addresses():
                gone_after = time.monotonic() - t0
                break
            time.sleep(0.01)
        assert gone_after is not None and gone_after < 0.3, f"VIP still there after {gone_after}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not [
            h for h in fleet.vip_holders() if h != holder.name
        ]:
            time.sleep(0.05)
        assert [h for h in fleet.vip_holders() if h != holder.name], "nobody took the VIP over"
    _check(fleet, sampler)
