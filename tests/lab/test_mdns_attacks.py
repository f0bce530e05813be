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


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_flood_of_instance_names_loses_no_peer_and_stays_bounded(
    lab_factory: LabFactory, tmp_path: Path, token: Path
) -> None:
    lab = lab_factory(4, with_client=True)
    attacker = lab.client
    assert attacker is not None
    members = _members(lab.machines[:3], tmp_path, token)
    late: Node | None = None
    try:
        time.sleep(2)
        before = {n.machine.name: _rss_kb(n.proc.pid) for n in members}
        flood = Attack(attacker, "mdns-flood", "--count", "10000").wait(timeout=120)
        time.sleep(5)
        after = {n.machine.name: _rss_kb(n.proc.pid) for n in members}
        # Discovery still works: a member that starts now is found, and finds the others.
        late = announce(lab.machines[3], tmp_path, token, "--duration", "60")
        names = {m.name for m in lab.machines}
        everyone = [*members, late]
        wait_until(
            lambda: all(set(n.seen()) == names - {n.machine.name} for n in everyone),
            20,
            "the late member to meet everyone after the flood",
        )
        assert flood["instances"] == 10_000
        assert _gone(members) == {"n1": [], "n2": [], "n3": []}
        growth = {k: (after[k] - before[k]) / 1024 for k in before}
        print(f"RSS growth under a 10,000-name flood (MiB): {growth}")
        assert all(g < 6 for g in growth.values()), growth  # 10-12 MiB before eviction
        for n in members:
            lines = n.out.read_text().splitlines()
            logged = [ln for ln in lines if "refused announcement" in ln and ln[:1] != "{"]
            assert len(logged) <= 12, f"{n.machine.name} logged {len(logged)} refusals"
    finally:
        for n in [*members, *([late] if late else [])]:
            n.stop()


def test_replayed_announcements_roll_nothing_back(
    lab_factory: LabFactory, tmp_path: Path, token: Path
) -> None:
    """Captured signed records, replayed after n3 changed its role, under their own instance
    names and under names of the attacker's: n3 stays an agent, the aliases are refused."""
    lab = lab_factory(3, with_client=True)
    attacker = lab.client
    assert attacker is not None
    n1, n2, n3 = lab.machines
    members = [
        announce(n1, tmp_path, token, "--duration", "120"),
        announce(n2, tmp_path, token, "--duration", "120"),
        announce(
            n3,
            tmp_path,
            token,
            "--duration",
            "120",
            "--update-after",
            "7",
            "--update-role",
            "agent",
        ),
    ]
    try:
        wait_until(lambda: all(len(n.seen()) == 2 for n in members), 15, "members to meet")
        assert members[0].seen()["n3"]["role"] == "none"
        replay = Attack(attacker, "mdns-replay", "--learn", "2", "--delay", "6", "--duration", "4")
        wait_until(lambda: bool(members[2].events("updated")), 15, "n3 to become an agent")
        counters = replay.wait(timeout=60)
        time.sleep(2)
        assert counters["instances"] == 3 and counters["packets"] > 20, counters
        for n in members[:2]:
            assert n.seen()["n3"]["role"] == "agent", n.machine.name
            roles = [e["role"] for e in n.events("peer") if e["name"] == "n3"]
            assert roles == ["none", "agent"], (n.machine.name, roles)
            refused = n.rejects()
            aliases = [i for i in refused if i.startswith("replay")]
            assert aliases and all("does not match" in refused[i] for i in aliases), refused
        assert _gone(members) == {"n1": [], "n2": [], "n3": []}
    finally:
        for n in members:
            n.stop()
