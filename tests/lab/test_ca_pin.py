"""Agents pin the cluster CA: a stranger answering at the registration address gets no token.

The attacker (the lab's client machine, without the token) adds the VIP to its own interface,
claims it with gratuitous ARP and serves a k3s look-alike on VIP:6443 (tests/lab/attacker_tls.py)
while a fresh agent joins. An agent that does not pin the cluster CA trusts the attacker's
``/cacerts`` and sends its token's password in Basic auth with every ``/v1-k3s/*`` request.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from k3snoded.tokens import normalize
from tests.lab import dbs
from tests.lab.attacker import Attack
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.fleet import PYTHON, TOKEN, VIP, Fleet, Status, pids_named
from tests.lab.netns import Machine

__all__ = ["lab_factory"]

require_root()
pytestmark = pytest.mark.lab


def _formed(fleet: Fleet) -> None:
    fleet.wait(
        lambda st: fleet.converged(st) and len(fleet.vip_holders()) == 1, 120, "the fleet formed"
    )


def test_a_fresh_agent_sends_no_token_to_a_stranger_at_the_vip(lab_factory: LabFactory) -> None:
    lab = lab_factory(3, with_client=True, with_db=True)
    attacker = lab.client
    assert attacker is not None
    db = dbs.start(lab, "postgres")
    fleet = Fleet(lab, endpoint=db.endpoint, eligible=2, agents=1, servers=2)
    fleet.start_all()
    _formed(fleet)
    agent = next(n for n in fleet.nodes if n.agent_only)

    attack = Attack(attacker, "tls-server", "--vip", VIP, "--duration", "40")
    deadline = time.monotonic() + 20
    while not attack.events("serving") and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # its gratuitous ARP (twice a second) reaches the agent machine
    agent.stop()
    # A new or rebuilt agent machine: k3s's agent state (its CA, its load balancer's servers)
    # is gone, so the registration address is all it knows.
    shutil.rmtree(agent.data_dir / "agent", ignore_errors=True)
    agent.start()
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and attack.proc.poll() is None:
        if attack.events("credentials") or "token CA hash does not match" in agent.log():
            break
        time.sleep(0.5)
    time.sleep(3)  # a few more of the agent's attempts (every 2 s)
    attack.stop()

    asked = {e["path"] for e in attack.events("request")}
    assert "/cacerts" in asked, f"the agent never reached the attacker: {asked}"
    secrets = {e["secret"] for e in attack.events("credentials")}
    assert not secrets, f"the attacker received credentials: {len(secrets)} distinct"
    assert normalize(TOKEN) not in agent.log()
    # It was k3s's own CA check that refused the attacker, before any credentials.
    assert "token CA hash does not match the Cluster CA certificate hash" in agent.log()

    # With the stranger gone, the agent joins the real servers.
    fleet.wait(fleet.converged, 120, "the agent joined the real servers")


ASK = r"""
import base64, ssl, sys, urllib.error, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
req = urllib.request.Request(sys.argv[1])
req.add_header("Authorization", "Basic " + base64.b64encode(sys.argv[2].encode()).decode())
try:
    with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
"""


def test_an_agent_only_machine_runs_with_the_agent_token_alone(lab_factory: LabFactory) -> None:
    """The fleet's servers take k3snoded's agent token; an agent-only machine given only that
    token (a copy of a server's <data-dir>/server/agent-token) joins, and with it gets 403 from
    k3s's server-only routes."""
    lab = lab_factory(3, with_db=True)
    db = dbs.start(lab, "postgres")
    fleet = Fleet(lab, endpoint=db.endpoint, eligible=2, agents=1, servers=2)
    servers = [n for n in fleet.nodes if not n.agent_only]
    agent = next(n for n in fleet.nodes if n.agent_only)
    for n in servers:
        n.start()

    def servers_ready(st: dict[str, Status | None]) -> bool:
        return all((st.get(n.name) or {}).get("k3s", {}).get("ready") for n in servers)

    fleet.wait(servers_ready, 120, "both servers ready")
    agent_token = agent.dir / "agent-token"
    agent_token.write_bytes((servers[0].data_dir / "server" / "agent-token").read_bytes())
    agent_token.chmod(0o600)
    ca_hash, _, credentials = agent_token.read_text().strip()[3:].partition("::")
    password = credentials.partition(":")[2]
    assert password and password != normalize(TOKEN)
    agent.overrides = {"cluster": {"token_file": None, "agent_token_file": str(agent_token)}}
    agent.start()
    st = fleet.wait(fleet.converged, 120, "the agent joined with the agent token")

    pin = st[agent.name]["ca_pin"]  # type: ignore[index]
    assert (pin["ca_hash"], pin["source"], pin["agent_token"]) == (ca_hash, "token file", True)
    # Nothing on the agent machine holds the cluster token: its files, k3s's command line and
    # environment.
    secret = normalize(TOKEN).encode()
    for path in agent.dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret not in path.read_bytes(), path
    for pid in pids_named(agent.machine, b"k3s"):
        for part in ("cmdline", "environ"):
            assert secret not in Path(f"/proc/{pid}/{part}").read_bytes()

    def ask(path: str, credentials: str) -> int:
        url = f"https://{servers[0].machine.address}:6443{path}"
        return int(agent.machine.run([str(PYTHON), "-c", ASK, url, credentials]).stdout)

    # What the agent token opens on k3s, and what it does not.
    assert ask("/v1-k3s/config", f"node:{password}") == 200
    assert ask("/v1-k3s/server-bootstrap", f"node:{password}") == 403
    assert ask("/v1-k3s/server-bootstrap", f"server:{normalize(TOKEN)}") == 400  # etcd disabled

    # Keyless, it serves no signed peer API (a server's answers an unsigned request with 401).
    def peers_status(machine: Machine) -> int:
        url = f"http://{machine.address}:6480/v1/peers"
        code = f"import urllib.request as u,urllib.error as e\ntry: u.urlopen({url!r},timeout=5)\n"
        code += "except e.HTTPError as x: print(x.code)"
        return int(servers[1].machine.run([str(PYTHON), "-c", code]).stdout)

    assert peers_status(servers[0].machine) == 401
    assert peers_status(agent.machine) == 404
