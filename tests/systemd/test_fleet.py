"""A fleet forms by its units alone: 3 server-capable + 2 agent-only machines on PostgreSQL,
each a Debian container with systemd as PID 1, the package installed with apt-get and the
daemon started only by ``systemctl enable --now k3snoded`` (all five at once)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab import dbs
from tests.lab.netns import Lab
from tests.systemd import node as nodes
from tests.systemd.conftest import Debs, suites
from tests.systemd.nspawn import SUITES, Booted, SystemdLab

pytestmark = pytest.mark.timeout(900)
SERVERS = 2


@pytest.fixture(params=suites())
def fleet(request: pytest.FixtureRequest, debs: Debs) -> Iterator[list[Booted]]:
    lab = Lab(5, with_db=True).up()
    try:
        db = dbs.start(lab, "postgres")
        booted = SystemdLab(lab, SUITES[request.param]).boot(lab.machines)
        spec = nodes.FleetSpec(endpoint=db.endpoint, servers=SERVERS)
        for i, m in enumerate(booted):
            nodes.setup_node(m, debs.deb, spec, agent_only=i >= 3)
        yield booted
    finally:
        lab.down()


def _formed(machines: list[Booted]) -> bool:
    st = [nodes.status(m) for m in machines]
    if any(s is None or not s["k3s"]["ready"] for s in st):
        return False
    roles = [s["node"]["role"] for s in st if s is not None]
    return roles.count("server") == SERVERS and roles.count("agent") == len(machines) - SERVERS


def test_fleet_forms_by_the_units_alone(fleet: list[Booted]) -> None:
    for m in fleet:
        nodes.enable_now(m, no_block=True)
    fleet[0].wait(lambda: _formed(fleet), 240, "3 + 2 machines formed: 2 servers, 3 agents")
    statuses = {m.name: nodes.status(m) for m in fleet}
    servers = sorted(n for n, s in statuses.items() if s and s["node"]["role"] == "server")
    assert set(servers) <= {"n1", "n2", "n3"}  # agent-only machines never serve
    for m in fleet:  # every daemon is active in systemd, READY sent
        assert m.show("k3snoded", "ActiveState")["ActiveState"] == "active"
        assert m.show("k3snoded", "UnitFileState")["UnitFileState"] == "enabled"
    fleet[0].wait(lambda: sum(nodes.holds_vip(m) for m in fleet) == 1, 30, "exactly one VIP holder")
    holder = next(m for m in fleet if nodes.holds_vip(m))
    assert holder.name in servers
    for m in fleet:  # /healthz is the load balancer's view: servers only
        assert nodes.healthz(m) == (200 if m.name in servers else 503), m.name
