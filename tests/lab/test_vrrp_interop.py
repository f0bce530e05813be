"""Interop with keepalived (Debian's 2.2.x, VRRPv3, same VRID, advert 0.1 s): the proof that we
speak the protocol and not just to ourselves. Debian's keepalived has no ``auth_hmac``, so these
run our documented unauthenticated mode (``registration.vip.authentication: none``); the
authenticated interop is in ``test_vrrp_interop_hmac.py``.

Either side at the higher priority keeps the address and the other stays backup; stopping or
killing either moves the address to the other; keepalived (which preempts) takes the address
back from us when it returns at a higher priority, and we yield within one advert interval.
"""

from __future__ import annotations

import re
import shutil
import signal
import time

import pytest

from tests.lab import keepalived
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.test_vrrp_support import ADVERT, VIP, Sampler, holders, start_ours, wait_for

require_root()

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("keepalived") is None, reason="keepalived is not installed"),
]
__all__ = ["lab_factory"]  # the fixture, imported for pytest

SLACK = 0.03
# What keepalived says about adverts it rejects (checksum, TTL, VRID/address/interval mismatch).
COMPLAINTS = re.compile(r"invalid|checksum|mismatch|bad |wrong|unknown|ttl", re.IGNORECASE)


def _config(priority: int, state: str = "BACKUP") -> keepalived.VrrpConfig:
    return keepalived.VrrpConfig(vip=f"{VIP}/24", priority=priority, advert_int=ADVERT, state=state)


def _complaints(ka: keepalived.Keepalived) -> list[str]:
    return [line for line in ka.log_file.read_text().splitlines() if COMPLAINTS.search(line)]


def test_ours_higher_keepalived_stays_backup_then_takes_over(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    n1, n2 = lab.machines
    ours = start_ours(n1, 150, authenticated=False)
    wait_for("ours master", lambda: holders(lab.machines) == {"n1"}, timeout=10)
    with Sampler(lab.machines) as sampler:
        ka = keepalived.start(n2, _config(100))
        ka.vrrp_pid()
        time.sleep(1.5)  # > 3 master-down intervals of keepalived's
        assert not sampler.ever_held_by("n2"), "keepalived took the address from a higher master"
        log = ka.log_file.read_text()
        assert "Entering BACKUP STATE" in log
        assert "Entering MASTER STATE" not in log
        assert ours.state() == "master"

        # SIGTERM ours: the priority-0 advert makes keepalived take over after its skew time.
        t0 = time.monotonic()
        ours.signal(signal.SIGTERM)
        wait_for("keepalived taking over", lambda: holders(lab.machines) == {"n2"}, 2)
        wait_for("the sampler seeing it", lambda: sampler.first_held("n2", t0) is not None, 1)
        taken = sampler.first_held("n2", t0)
        assert taken is not None
        took = taken - t0
        assert ours.proc.wait(5) == 0
        overlap = sampler.longest_overlap()

        # Ours comes back at 150 without preemption: stays backup behind keepalived's 100.
        back = start_ours(n1, 150, tag="-b", authenticated=False)
        wait_for("ours in backup", lambda: back.state() == "backup", timeout=10)
        wait_for("ours learning keepalived", lambda: back.status().get("master") == n2.address)
        time.sleep(5 * ADVERT)
        assert holders(lab.machines) == {"n2"}

        # Killing keepalived (parent and VRRP child) moves the address to us.
        ka.kill_both()
        wait_for("ours taking over", lambda: back.state() == "master", timeout=2)
        wait_for("ours holding", lambda: "n1" in holders(lab.machines), timeout=1)
    assert sampler.error is None
    assert took < 0.5, f"keepalived took {took:.3f} s after our priority-0 advert"
    assert overlap <= ADVERT + SLACK, f"two holders for {overlap:.3f} s"
    assert _complaints(ka) == [], "keepalived complained about our adverts"


def test_keepalived_higher_ours_stays_backup_then_takes_over(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    n1, n2 = lab.machines
    ka = keepalived.start(n1, _config(150, state="MASTER"))
    wait_for("keepalived master", lambda: holders(lab.machines) == {"n1"}, timeout=10)
    with Sampler(lab.machines) as sampler:
        ours = start_ours(n2, 100, authenticated=False)
        wait_for("ours in backup", lambda: ours.state() == "backup", timeout=10)
        wait_for("ours learning keepalived", lambda: ours.status().get("master") == n1.address)
        time.sleep(1.0)
        assert not sampler.ever_held_by("n2"), "we took the address from a higher master"
        assert ours.status()["dropped"] == 0, "we dropped keepalived's adverts"

        # SIGTERM keepalived: its priority-0 advert makes us take over after our skew time.
        t0 = time.monotonic()
        ka.proc.send_signal(signal.SIGTERM)
        wait_for("ours taking over", lambda: holders(lab.machines) == {"n2"}, timeout=2)
        wait_for("the sampler seeing it", lambda: sampler.first_held("n2", t0) is not None, 1)
        taken = sampler.first_held("n2", t0)
        assert taken is not None
        took = taken - t0
        ka.stop()
        graceful_overlap = sampler.longest_overlap()

        # keepalived returns at 150 and preempts: we yield at once (one advert interval).
        before = time.monotonic()
        ka2 = keepalived.start(n1, _config(150, state="MASTER"))
        wait_for("keepalived back as master", lambda: "n1" in holders(lab.machines), timeout=5)
        wait_for("ours yielding", lambda: holders(lab.machines) == {"n1"}, timeout=1)
        wait_for("ours reporting backup", lambda: ours.state() == "backup", timeout=1)
        preempt_overlap = sampler.longest_overlap(since=before)

        # SIGKILL of keepalived's processes: we take over (its stale copy stays on n1).
        ka2.kill_both()
        wait_for("ours taking over", lambda: "n2" in holders(lab.machines), timeout=2)
        # The runner's status file is rewritten just after the address is added: read it
        # within a bound rather than at the same instant.
        wait_for("ours reporting master", lambda: ours.state() == "master", timeout=1)
    assert sampler.error is None
    assert took < 0.5, f"we took {took:.3f} s after keepalived's priority-0 advert"
    assert graceful_overlap <= ADVERT + SLACK, f"two holders for {graceful_overlap:.3f} s"
    assert preempt_overlap <= ADVERT + SLACK, f"two holders for {preempt_overlap:.3f} s"
    assert "(VI_1) sent 0 priority" in ka.log_file.read_text()
    assert _complaints(ka) == [] and _complaints(ka2) == []
    ours.signal(signal.SIGTERM)


def test_unicast_with_keepalived(lab_factory: LabFactory) -> None:
    """Unicast adverts both ways: each side verifies the other's checksum, whose pseudo-header
    carries the unicast destination (keepalived >= 2.0 without old_unicast_checksum)."""
    lab = lab_factory(2)
    n1, n2 = lab.machines
    ours = start_ours(n1, 150, "--unicast-peer", n2.address, authenticated=False)
    wait_for("ours master", lambda: ours.state() == "master", timeout=10)
    cfg = keepalived.VrrpConfig(
        vip=f"{VIP}/24", priority=100, advert_int=ADVERT, unicast_peers=(n1.address,)
    )
    ka = keepalived.start(n2, cfg)
    ka.vrrp_pid()
    with Sampler(lab.machines) as sampler:
        time.sleep(1.0)
        assert not sampler.ever_held_by("n2"), "keepalived did not accept our unicast adverts"
        t0 = time.monotonic()
        ours.signal(signal.SIGTERM)
        wait_for("keepalived taking over", lambda: holders(lab.machines) == {"n2"}, timeout=2)
        took = time.monotonic() - t0
        back = start_ours(n1, 150, "--unicast-peer", n2.address, tag="-b", authenticated=False)
        wait_for("ours in backup", lambda: back.state() == "backup", timeout=10)
        wait_for("ours learning keepalived", lambda: back.status().get("master") == n2.address)
        time.sleep(5 * ADVERT)
    assert sampler.error is None
    assert holders(lab.machines) == {"n2"}
    assert back.status()["dropped"] == 0, "we dropped keepalived's unicast adverts"
    assert took < 0.5
    assert _complaints(ka) == []
