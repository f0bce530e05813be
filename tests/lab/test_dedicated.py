"""servers.dedicated in the lab: the control-plane taint and role labels follow role changes.

k3s applies --node-taint only when a Node is created and never removes the control-plane
label; k3snoded reconciles them through the Kubernetes API after a role change (k3snoded.kube).
Here a server machine crashes, an agent is promoted (it gets the taint), and the crashed
machine comes back as an agent (its taint and control-plane label go).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.lab import dbs
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.fleet import PYTHON, Fleet, FleetNode, Status

__all__ = ["lab_factory"]

require_root()
pytestmark = pytest.mark.lab

TAINT = {"key": "k3s-controlplane", "value": "true", "effect": "NoExecute"}
CP = "node-role.kubernetes.io/control-plane"

_GET_NODES = (
    "import json,ssl,sys,urllib.request;"
    "c=ssl.create_default_context(cafile=sys.argv[2]);c.load_cert_chain(sys.argv[3],sys.argv[4]);"
    "r=urllib.request.urlopen(sys.argv[1]+'/api/v1/nodes',context=c,timeout=5);"
    "sys.stdout.write(json.dumps({i['metadata']['name']:i for i in json.load(r)['items']}))"
)


def _nodes(via: FleetNode) -> dict[str, Any]:
    """Every Node object, read from ``via``'s own apiserver with its admin certificate."""
    tls = via.data_dir / "server" / "tls"
    out = via.machine.run(
        [
            str(PYTHON),
            "-c",
            _GET_NODES,
            f"https://{via.machine.address}:6443",
            str(tls / "server-ca.crt"),
            str(tls / "client-admin.crt"),
            str(tls / "client-admin.key"),
        ]
    ).stdout
    nodes: dict[str, Any] = json.loads(out)
    return nodes


def _fits(node: dict[str, Any], role: str) -> bool:
    tainted = TAINT in ((node.get("spec") or {}).get("taints") or [])
    labelled = CP in node["metadata"].get("labels", {})
    return (tainted and labelled) if role == "server" else not (tainted or labelled)


def _roles(st: dict[str, Status | None]) -> dict[str, str]:
    return {n: s["node"]["role"] for n, s in st.items() if s is not None}


def test_dedicated_taint_follows_demotion_and_promotion(lab_factory: LabFactory) -> None:
    lab = lab_factory(3, with_db=True)
    db = dbs.start(lab, "postgres")
    fleet = Fleet(
        lab,
        endpoint=db.endpoint,
        eligible=3,
        agents=0,
        servers=2,
        extra={"servers": {"dedicated": True}},
    )
    fleet.start_all()
    st = fleet.wait(fleet.converged, timeout=90, what="fleet formed")
    roles = _roles(st)
    servers = sorted(n for n, r in roles.items() if r == "server")
    agent = next(n for n, r in roles.items() if r == "agent")

    def fitting(reader: str, expected: dict[str, str]) -> bool:
        try:
            nodes = _nodes(fleet.node(reader))
        except Exception:
            return False
        return all(n in nodes and _fits(nodes[n], r) for n, r in expected.items())

    fleet.wait(
        lambda _st: fitting(servers[0], roles),
        timeout=30,
        what="servers tainted and labelled, the agent neither",
    )

    # A server machine crashes: the agent is promoted and must get the taint (k3s would not
    # add it: its Node exists already).
    victim, survivor = servers
    fleet.node(victim).kill()
    fleet.node(victim).machine.stop_all()
    fleet.wait(
        lambda st: (
            _roles({n: s for n, s in st.items() if n != victim}).get(agent) == "server"
            and bool((st[agent] or {}).get("k3s", {}).get("ready"))
        ),
        timeout=90,
        what=f"{agent} promoted",
    )
    fleet.wait(
        lambda _st: fitting(survivor, {agent: "server", survivor: "server"}),
        timeout=40,
        what=f"{agent} tainted after its promotion",
    )

    # The crashed machine comes back; its seat is taken, so it runs an agent: the taint and
    # the control-plane label k3s gave it as a server must go.
    fleet.node(victim).start()
    fleet.wait(
        lambda st: (
            _roles(st).get(victim) == "agent"
            and bool((st[victim] or {}).get("k3s", {}).get("ready"))
        ),
        timeout=90,
        what=f"{victim} back as an agent",
    )
    fleet.wait(
        lambda _st: fitting(survivor, {victim: "agent", agent: "server", survivor: "server"}),
        timeout=40,
        what=f"{victim}'s taint and control-plane label removed",
    )
    assert f"node {victim} updated for role agent" in fleet.node(victim).log()
