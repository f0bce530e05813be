"""Agents pin the cluster CA: a stranger answering at the registration address gets no token.

The attacker (the lab's client machine, without the token) adds the VIP to its own interface,
claims it with gratuitous ARP and serves a k3s look-alike on VIP:6443 (tests/lab/attacker_tls.py)
while a fresh agent joins. An agent that does not pin the cluster CA trusts the attacker's
``/cacerts`` and sends its token's password in Basic auth with every ``/v1-k3s/*`` request.
"""

from __future__ import annotations

import shutil
import time

import pytest

from k3snoded.tokens import normalize
from tests.lab import dbs
from tests.lab.attacker import Attack
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.fleet import TOKEN, VIP, Fleet

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
    time.sleep(2)  # the attacker holds the VIP for the agent's ARP cache
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
