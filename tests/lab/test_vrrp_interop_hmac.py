"""Authenticated interop with keepalived's ``auth_hmac`` (keepalived >= 2.4, VRRPv3, advert 0.1 s).

Debian 12's keepalived 2.2.7 has no auth_hmac, so these run only when ``K3SNODED_KEEPALIVED_HMAC``
names a keepalived built from source (docs/vrrp.md says how this was checked); otherwise they
skip. keepalived gets the cluster's advert key from ``python -m k3snoded.vrrp keepalived-key``
(``key 1 file:...``, enforce mode): each side accepts the other's signed adverts, elections and
handovers behave as unauthenticated, and a keepalived with another key is refused by both.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.lab import keepalived
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.netns import Machine
from tests.lab.test_vrrp_support import (
    ADVERT,
    CLUSTER,
    PYTHON,
    VIP,
    Sampler,
    holders,
    start_ours,
    token_file,
    wait_for,
)

require_root()

BINARY = keepalived.hmac_binary()
pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        BINARY is None, reason="K3SNODED_KEEPALIVED_HMAC does not name a keepalived >= 2.4"
    ),
]
__all__ = ["lab_factory"]  # the fixture, imported for pytest

SLACK = 0.03
AUTH_COMPLAINTS = re.compile(r"authentication|trailer|HMAC", re.IGNORECASE)


def _key_file(machine: Machine, token: Path | None = None) -> Path:
    """The cluster's advert key for keepalived, written by our own command (mode 0600)."""
    out = machine.lab.workdir / f"keepalived-key-{machine.name}"
    res = machine.run(
        [PYTHON, "-m", "k3snoded.vrrp", "keepalived-key", "--token-file",
         str(token or token_file(machine)), "--cluster", CLUSTER, "--out", str(out)],
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    return out


def _start_ka(
    machine: Machine, priority: int, key: Path, state: str = "BACKUP"
) -> keepalived.Keepalived:
    assert BINARY is not None
    cfg = keepalived.VrrpConfig(
        vip=f"{VIP}/24", priority=priority, advert_int=ADVERT, state=state, auth_hmac_key_file=key
    )
    return keepalived.start(machine, cfg, binary=BINARY)


def _auth_complaints(ka: keepalived.Keepalived) -> list[str]:
    return [ln for ln in ka.log_file.read_text().splitlines() if AUTH_COMPLAINTS.search(ln)]


def test_signed_adverts_both_ways(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    n1, n2 = lab.machines
    ours = start_ours(n1, 150)
    wait_for("ours master", lambda: holders(lab.machines) == {"n1"}, timeout=10)
    with Sampler(lab.machines) as sampler:
        ka = _start_ka(n2, 100, _key_file(n2))
        ka.vrrp_pid()
        time.sleep(1.5)
        assert not sampler.ever_held_by("n2"), "keepalived did not accept our signed adverts"
        assert "Entering MASTER STATE" not in ka.log_file.read_text()
        # Our priority-0 advert (signed) hands over within keepalived's skew time.
        t0 = time.monotonic()
        ours.signal(signal.SIGTERM)
        wait_for("keepalived taking over", lambda: holders(lab.machines) == {"n2"}, timeout=2)
        took = time.monotonic() - t0
        assert ours.proc.wait(5) == 0
        time.sleep(0.1)
        overlap = sampler.longest_overlap(since=t0)
        # Ours again, without preemption: it must accept keepalived's signed adverts.
        back = start_ours(n1, 150, tag="-b")
        wait_for("ours in backup", lambda: back.state() == "backup", timeout=10)
        wait_for("ours learning keepalived", lambda: back.status().get("master") == n2.address)
        time.sleep(10 * ADVERT)
        assert holders(lab.machines) == {"n2"}
        assert back.status()["dropped"] == 0, back.status()
        ka.kill_both()
        wait_for("ours taking over", lambda: back.state() == "master", timeout=2)
    assert sampler.error is None
    assert took < 0.5, f"keepalived took {took:.3f} s after our signed priority-0 advert"
    assert overlap <= ADVERT + SLACK, f"two holders for {overlap:.3f} s"
    assert _auth_complaints(ka) == [], "keepalived refused our signed adverts"


def test_keepalived_with_another_key_is_refused_both_ways(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory(2)
    n1, n2 = lab.machines
    ours = start_ours(n1, 150)
    wait_for("ours master", lambda: ours.state() == "master", timeout=10)
    other = tmp_path / "other-token"
    other.write_text("another-cluster-token-5d2c\n")
    other.chmod(0o600)
    ka = _start_ka(n2, 200, _key_file(n2, other), state="MASTER")
    wait_for("keepalived master (it hears no valid advert)", lambda: "n2" in holders(lab.machines))
    time.sleep(1.0)
    assert ours.state() == "master", "a higher priority with the wrong key made us yield"
    refused = dict(ours.status().get("auth_dropped", []))
    assert refused.get("bad-hmac", 0) > 5, refused
    wait_for(
        "keepalived logging our invalid HMAC",
        lambda: "invalid authentication HMAC" in ka.log_file.read_text(),
        timeout=2,
    )
