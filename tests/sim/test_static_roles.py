"""``roles.StaticRoles`` (machines without the fleet's datastore) on the simulator's virtual
clock: how soon an agent-only machine acts on what its peers announce.

An agent-only machine of a fleet learns the cluster CA hash from the servers' signed
announcements; until then it runs nothing. The real ``StaticRoles`` runs here with the real
config, token files and k3s command line; only discovery (what peers announce, set by the test
at a chosen instant) and the supervisor (recording what it is told to run) are stand-ins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from k3snoded.config import ClusterConfig, Config, K3sConfig, NodeConfig, RegistrationConfig
from k3snoded.model import RolePreference
from k3snoded.peers import PeerBook
from k3snoded.process import ChildSpec, ChildStatus
from k3snoded.roles import StaticRoles
from k3snoded.supervisor import Supervisor
from tests.sim.vloop import VirtualLoop

CA = "ab" * 32
VIP = "198.18.0.100"


class Announced:
    """What the peers announce: nothing until ``say`` (PeerBook's view, as StaticRoles reads it)."""

    def __init__(self) -> None:
        self.pins: list[tuple[str, bool, bool]] = []

    @property
    def key(self) -> bytes:
        return b"k" * 32

    def say(self, ca_hash: str) -> None:
        self.pins = [(ca_hash, True, True)]

    def announced_pins(self) -> list[tuple[str, bool, bool]]:
        return list(self.pins)

    def registration(self) -> str | None:
        return VIP

    def status(self) -> list[dict[str, Any]]:
        return []


class Recorder:
    """The supervisor's interface (roles.ChildControl): when it was told to run what."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wants: list[tuple[float, ChildSpec | None]] = []

    @property
    def status(self) -> ChildStatus:
        return ChildStatus()

    def want(self, spec: ChildSpec | None) -> None:
        self.wants.append((self.loop.time(), spec))

    def on_change(self, cb: Callable[[ChildStatus], None]) -> None:
        return None


def agent_config(tmp_path: Path) -> Config:
    token = tmp_path / "token"
    token.write_text("lab-fleet-token-7f3a9c2e5b8d41f6\n")
    token.chmod(0o600)
    return Config(
        cluster=ClusterConfig(name="lab", token_file=token),
        node=NodeConfig(
            name="n6",
            role=RolePreference.AGENT,
            address="198.18.0.16",
            interface="eth0",
            state_dir=tmp_path / "state",
            run_dir=tmp_path / "run",
        ),
        k3s=K3sConfig(data_dir=tmp_path / "k3s"),
        registration=RegistrationConfig(address=VIP),
    )


def test_an_agent_starts_soon_after_a_server_announces_the_ca_hash(tmp_path: Path) -> None:
    """The hash is announced at t = 5.05 s after the daemon started: the agent's k3s must be
    started within a fraction of a second, not at the next of once-a-second looks (an agent
    of a cold start waited up to a second there for nothing)."""
    (tmp_path / "state").mkdir()
    loop = VirtualLoop(start=0.0)
    peers = Announced()
    supervisor = Recorder(loop)
    cfg = agent_config(tmp_path)
    roles = StaticRoles(cfg, cast(Supervisor, supervisor), peers=cast(PeerBook, peers))
    said_at = 5.05

    async def scenario() -> None:
        task = asyncio.create_task(roles.run())
        loop.call_at(said_at, peers.say, CA)
        await asyncio.sleep(10.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    started = [t for t, spec in supervisor.wants if spec is not None]
    assert started, supervisor.wants
    assert started[0] >= said_at  # nothing ran before the hash was known
    assert started[0] - said_at <= 0.25, started
