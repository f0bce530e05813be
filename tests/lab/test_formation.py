"""Fleet formation in the lab (issue: fleet formation): real databases, real mDNS, real VRRP.

3 machines eligible to be servers + 2 agent-only machines (no datastore credentials), all
started at the same instant, converge to the right roles with one bootstrap.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.lab import dbs
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.fleet import PYTHON, VIP, Fleet, FleetNode, Status

__all__ = ["lab_factory"]

require_root()
pytestmark = pytest.mark.lab


def _cacerts(fleet: Fleet, name: str) -> bytes:
    code = (
        "import ssl,urllib.request,sys;"
        "c=ssl.create_default_context();c.check_hostname=False;c.verify_mode=ssl.CERT_NONE;"
        "sys.stdout.buffer.write(urllib.request.urlopen('https://127.0.0.1:6443/cacerts',"
        "context=c,timeout=5).read())"
    )
    node = fleet.node(name)
    return node.machine.run([str(PYTHON), "-c", code]).stdout.encode()


def _roles(st: dict[str, Status | None]) -> dict[str, str]:
    return {n: s["node"]["role"] for n, s in st.items() if s is not None}


@pytest.mark.parametrize(("kind", "servers"), [("postgres", 2), ("mysql", 3)])
def test_fleet_forms_with_one_bootstrap(lab_factory: LabFactory, kind: Any, servers: int) -> None:
    lab = lab_factory(5, with_db=True)
    db = dbs.start(lab, kind)
    # Pre-2023 k3s (no bootstrap lock): one CA here is k3snoded's doing (D2), not k3s's.
    old_k3s = {"K3S_FAKE_OLD_BOOTSTRAP": "1"}
    fleet = Fleet(
        lab, endpoint=db.endpoint, eligible=3, agents=2, servers=servers, fake_env=old_k3s
    )
    fleet.start_all()
    st = fleet.wait(fleet.converged, timeout=90, what="roles decided and every k3s ready")
    roles = _roles(st)
    assert roles["n4"] == roles["n5"] == "agent", "machines without credentials are agents"
    server_names = sorted(n for n, r in roles.items() if r == "server")
    assert len(server_names) == servers
    # Every machine of the fleet names the same coordinator in its status.
    coordinators = {s.get("coordinator") for s in st.values() if s and "coordinator" in s}
    assert len(coordinators) == 1 and None not in coordinators, coordinators

    # One bootstrap: every server serves the same cluster CA.
    cas = {n: _cacerts(fleet, n) for n in server_names}
    assert len(set(cas.values())) == 1, "two cluster CAs: double bootstrap"
    bootstrappers = {
        s.get("bootstrapped_by") for s in st.values() if s and s.get("bootstrapped_by")
    }
    assert len(bootstrappers) == 1

    # The kine table in the real database holds the cluster: one bootstrap key, the compaction
    # key, and the servers' registrations.
    code = (
        f"c={db.python_connect_source()};k=c.cursor();"
        "k.execute(\"SELECT name FROM kine WHERE name LIKE '/bootstrap/%' "
        "OR name = 'compact_rev_key'\");print('\\n'.join(sorted({r[0] for r in k.fetchall()})))"
    )
    assert lab.db is not None
    names = lab.db.run([str(PYTHON), "-c", code]).stdout.split()
    assert "compact_rev_key" in names
    assert len([n for n in names if n.startswith("/bootstrap/")]) == 1

    # The VIP sits on exactly one server.
    holders = fleet.vip_holders()
    assert len(holders) == 1 and holders[0] in server_names

    # Every agent's load-balancer file lists the servers' addresses (agents learn them from
    # /v1-k3s/apiservers as each server registers, so allow a few refreshes).
    want = {fleet.node(n).machine.address for n in server_names}
    for agent in ("n4", "n5"):
        path = fleet.node(agent).data_dir / "agent" / "etc" / "k3s-agent-load-balancer.json"
        listed: set[str] = set()
        lb: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lb = json.loads(path.read_text())
            listed = {a.split(":")[0] for a in lb["ServerAddresses"]}
            if listed == want:
                break
            time.sleep(0.5)
        assert lb["ServerURL"] == f"https://{VIP}:6443"
        assert listed == want

    # Restart the whole fleet: the same roles come back.
    fleet.stop_all()
    fleet.start_all()
    st2 = fleet.wait(fleet.converged, timeout=90, what="fleet back after restart")
    assert _roles(st2) == roles


def test_seed_only_fleet_and_agents_learn_the_registration_address(
    lab_factory: LabFactory,
) -> None:
    """mDNS off; every machine lists n1's peer API as its seed. The agent-only machines'
    config has no registration address: they learn it from the signed seed answers."""
    lab = lab_factory(5, with_db=True)
    db = dbs.start(lab, "postgres")
    fleet = Fleet(
        lab,
        endpoint=db.endpoint,
        eligible=3,
        agents=2,
        servers=2,
        mdns=False,
        seeds=["http://198.18.0.11:6480"],
        agents_know_registration=False,
    )
    fleet.start_all()
    st = fleet.wait(fleet.converged, timeout=90, what="seed-only fleet converged")
    for agent in ("n4", "n5"):
        s = st[agent]
        assert s is not None
        assert s["node"]["role"] == "agent"
        assert s["registration"] == VIP


def test_a_machine_with_another_token_changes_nothing(lab_factory: LabFactory) -> None:
    """Datastore credentials alone do not make a member: a machine whose cluster token differs
    is refused before it heartbeats, so it is never elected, and it says why."""
    lab = lab_factory(4, with_db=True)
    db = dbs.start(lab, "postgres")
    fleet = Fleet(lab, endpoint=db.endpoint, eligible=2, agents=1, servers=2)
    fleet.start_all()
    st = fleet.wait(fleet.converged, timeout=90, what="fleet formed")
    roles = _roles(st)
    stranger = FleetNode(fleet, lab.machines[3], agent_only=False)
    other = fleet.workdir / "other-token"
    other.write_text("a-different-token-0123456789abcdef\n")
    other.chmod(0o600)
    stranger.overrides = {"cluster": {"token_file": str(other)}, "node": {"role": "server"}}
    stranger.start()
    deadline = time.monotonic() + 15
    while "refusing to join" not in stranger.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "refusing to join" in stranger.log()
    s = stranger.status()
    assert s is not None and s["node"]["role"] == "none" and s["k3s"]["pid"] is None
    time.sleep(3)
    st = fleet.statuses()
    assert _roles(st) == roles
    for name in roles:
        node = st[name]
        assert node is not None
        assert "n4" not in {p["name"] for p in node.get("peers", []) if "alive" in p}
