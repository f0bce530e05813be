"""A stranger on the LAN (the lab's client machine, without the token) attacks the VIP.

Three servers run our speaker with authenticated adverts (the default). The attacker forges
VRRPv3 adverts for the fleet's VRID and VIP (the reproduced hole: ten a second at priority 254
for 6 s left the VIP unheld for 6.3 s), at every priority, with a forged HMAC trailer, from a
spoofed server address, and replays the servers' own captured adverts. None of it may take the
VIP off its holder even for one sample, nor move it.
"""

from __future__ import annotations

import time

import pytest

from tests.lab.attacker import Attack
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.netns import Machine
from tests.lab.test_vrrp_support import VIP, Ours, Sampler, holders, start_ours, wait_for

require_root()

pytestmark = pytest.mark.lab
__all__ = ["lab_factory"]  # the fixture, imported for pytest


def _settled(lab_factory: LabFactory) -> tuple[list[Machine], Machine, list[Ours], Ours]:
    lab = lab_factory(3, with_client=True)
    attacker = lab.client
    assert attacker is not None
    servers = lab.machines
    speakers = [start_ours(servers[0], 150)]
    wait_for("n1 master", lambda: speakers[0].state() == "master", timeout=10)
    speakers += [start_ours(m, p) for m, p in zip(servers[1:], (100, 50), strict=True)]
    wait_for("backups", lambda: all(s.state() == "backup" for s in speakers[1:]), timeout=10)
    wait_for("one holder", lambda: holders(servers) == {"n1"})
    return servers, attacker, speakers, speakers[0]


def _assert_untouched(sampler: Sampler, servers: list[Machine], since: float, what: str) -> None:
    assert sampler.error is None
    unheld = sampler.unheld(since, among=[m.name for m in servers])
    moves = sampler.moves(since)
    assert unheld == 0.0, f"{what}: the VIP was unheld for {unheld:.2f} s"
    assert moves == 0, f"{what}: the VIP moved {moves} times"


def test_forged_adverts_do_not_unhold_or_move_the_vip(lab_factory: LabFactory) -> None:
    servers, attacker, speakers, master = _settled(lab_factory)
    everyone = [*servers, attacker]
    with Sampler(everyone) as sampler:
        t0 = time.monotonic()
        # The reproduced hole: priority 254 from the attacker's own address, 10/s for 6 s.
        Attack(attacker, "vrrp-forge", "--vip", VIP, "--priorities", "254").wait()
        # Every priority, then a forged HMAC trailer, then a spoofed source (a backup's).
        Attack(attacker, "vrrp-forge", "--vip", VIP, "--priorities", "0-255", "--rate", "128",
               "--duration", "2").wait()  # fmt: skip
        Attack(attacker, "vrrp-forge", "--vip", VIP, "--trailer", "--rate", "50",
               "--duration", "2").wait()  # fmt: skip
        Attack(attacker, "vrrp-forge", "--vip", VIP, "--source", servers[1].address,
               "--priorities", "254,0", "--rate", "50", "--duration", "2").wait()  # fmt: skip
        time.sleep(0.5)
    _assert_untouched(sampler, servers, t0, "forged adverts")
    assert not sampler.ever_held_by(attacker.name)
    assert sampler.count() > 100
    assert master.state() == "master"
    for s in speakers:
        refused = dict(s.status().get("auth_dropped", []))
        assert refused.get("unauthenticated", 0) > 50, (s.machine.name, refused)
        assert refused.get("bad-hmac", 0) > 50, (s.machine.name, refused)
    # Logged once per source and reason (at WARNING), not once per advert.
    warnings = [line for line in speakers[2].log().splitlines() if " WARNING " in line]
    for reason in ("unauthenticated", "bad-hmac"):
        said = [w for w in warnings if f"({reason}): advert from {attacker.address}" in w]
        assert len(said) == 1, (reason, said)


def test_replayed_authenticated_adverts_change_nothing(lab_factory: LabFactory) -> None:
    servers, attacker, speakers, master = _settled(lab_factory)
    with Sampler([*servers, attacker]) as sampler:
        t0 = time.monotonic()
        replay = Attack(attacker, "vrrp-replay", "--capture", "1.5", "--duration", "4")
        counters = replay.wait()
        raised = Attack(attacker, "vrrp-replay", "--capture", "1", "--raise-priority",
                        "--duration", "2").wait()  # fmt: skip
        time.sleep(0.5)
    assert counters["captured"] >= 10, "the attacker must have captured the master's adverts"
    assert counters["sent"] > 100 and raised["sent"] > 50
    _assert_untouched(sampler, servers, t0, "replayed adverts")
    assert master.state() == "master"
    for s in speakers[1:]:
        refused = dict(s.status().get("auth_dropped", []))
        assert refused.get("replayed", 0) > 100, (s.machine.name, refused)
        assert refused.get("bad-hmac", 0) > 10, (s.machine.name, refused)
