"""A stranger on the LAN (the lab's client machine, without the token) attacks discovery.

Three members announce with the signed mDNS of ``python -m k3snoded.discovery``. The attacker
learns their instance names and records by browsing (multicast is visible to everyone) and
then sends forged goodbyes (the reproduced hole: python-zeroconf honours a TTL-0 PTR from
anyone, and the members dropped every verified peer), floods 10,000 instance names, and replays
captured signed announcements. No member may lose a peer, and the flood must leave memory and
the log bounded.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.lab.attacker import Attack
from tests.lab.fixtures import LabFactory, require_root
from tests.lab.netns import Machine
from tests.lab.test_mdns import Node, announce, lab_factory, token, wait_until

require_root()

pytestmark = pytest.mark.lab
__all__ = ["lab_factory", "token"]  # fixtures, imported for pytest


def _members(lab_machines: list[Machine], tmp: Path, token_path: Path) -> list[Node]:
    members = [announce(m, tmp, token_path, "--duration", "120") for m in lab_machines]
    names = {m.name for m in lab_machines}
    wait_until(
        lambda: all(set(n.seen()) == names - {n.machine.name} for n in members),
        15,
        "the members to see each other",
    )
    return members


def _gone(members: list[Node]) -> dict[str, list[str]]:
    return {n.machine.name: [e["name"] for e in n.events("gone")] for n in members}


def test_forged_goodbyes_do_not_drop_verified_peers(
    lab_factory: LabFactory, tmp_path: Path, token: Path
) -> None:
    lab = lab_factory(3, with_client=True)
    attacker = lab.client
    assert attacker is not None
    members = _members(lab.machines, tmp_path, token)
    try:
        ptr = Attack(attacker, "mdns-goodbye", "--duration", "4").wait()
        every = Attack(attacker, "mdns-goodbye", "--all-records", "--duration", "4").wait()
        time.sleep(8)  # longer than a confirmation takes
        assert ptr["instances"] == 3 and every["instances"] == 3, (ptr, every)
        assert _gone(members) == {"n1": [], "n2": [], "n3": []}
        names = {m.name for m in lab.machines}
        for n in members:
            assert set(n.seen()) == names - {n.machine.name}
        # A real goodbye (signed) still removes the peer at once.
        members[0].stop()
        wait_until(
            lambda: all("n1" not in n.seen() for n in members[1:]), 5, "n1's goodbye to arrive"
        )
    finally:
        for n in members[1:]:
            n.stop()
