"""Where this node's role comes from: the config alone, or the fleet.

* ``StaticRoles``: no shared datastore. With no registration address the node is a single k3s
  server on the embedded SQLite (the simplest useful cluster); with one, or with ``role: agent``,
  it is an agent joining that address.
* ``FleetRoles`` (``fleet.py``): a shared MySQL/PostgreSQL datastore; the coordinator decides.

Either way the daemon reads ``wanted`` and the role source drives the supervisor.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from k3snoded import capin, k3s
from k3snoded.atomic import read_json_state, write_json_state
from k3snoded.capin import CaPin, Pin
from k3snoded.config import Config
from k3snoded.model import Role, RolePreference
from k3snoded.peers import PeerBook
from k3snoded.process import ChildSpec, ChildStatus
from k3snoded.supervisor import Supervisor
from k3snoded.ticks import sleep_to_grid
from k3snoded.tokens import TokenError
from k3snoded.vip import VipKeeper

log = logging.getLogger("k3snoded.roles")

# How often a machine without the fleet's datastore looks at what its peers announce: while it
# runs nothing (waiting for the cluster CA hash or the registration address, e.g. during a cold
# start) often, so that an agent starts within a fraction of a second of the first server's
# announcement; once it runs its role, once a second. Either is in-memory work, no statement.
WAITING_POLL = 0.2
RUNNING_POLL = 1.0


@dataclass(frozen=True)
class Wanted:
    """The role this node should run now, where it registers, and the sentence saying why."""

    role: Role = Role.NONE
    registration: str = ""
    reason: str = "starting"


class ChildControl(Protocol):
    """What a role source needs of the k3s child's supervisor (``supervisor.Supervisor``)."""

    @property
    def status(self) -> ChildStatus: ...

    def want(self, spec: ChildSpec | None) -> None: ...

    def on_change(self, cb: Callable[[ChildStatus], None]) -> None: ...


WAITING_FOR_PIN = (
    "agent, waiting for the cluster CA hash before k3s may join (from the fleet's datastore, "
    "a server's signed announcement, or a secure token in the token file)"
)


class RoleSource(abc.ABC):
    """Decides this node's role and drives the supervisor to it (level-triggered)."""

    def __init__(self, cfg: Config, supervisor: ChildControl, *, key: bytes = b"") -> None:
        self.cfg = cfg
        self.supervisor = supervisor
        self.wanted = Wanted()
        self.key = key  # the cluster key: the derived agent token
        self.pins = CaPin(cfg)  # what this machine knows of the cluster CA (capin.py)
        self._applied = Pin()
        self._write_failed = ""
        self._after_step: list[Callable[[], None]] = []

    def after_each_step(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every step of the role loop (what this machine announces,
        its role and the CA hash it vouches for, may have changed: ``PeerBook.poke``)."""
        self._after_step.append(callback)

    def _stepped(self) -> None:
        for callback in self._after_step:
            callback()

    @property
    def pin(self) -> Pin:
        return self.pins.pin

    async def load_pin(self) -> None:
        """What a previous run knew: the hash its agent pinned, and whether its k3s took the
        agent token (so that a restart during a datastore outage starts the same k3s)."""
        await self.pins.load()
        self.pins.set_agent_token(await asyncio.to_thread(remembered_agent_token, self.cfg))

    @abc.abstractmethod
    async def run(self) -> None:
        """Run until cancelled."""

    async def stop(self) -> None:  # noqa: B027 (optional hook; most sources hold nothing)
        """Release what the role holds (VIP, leases) before k3s is stopped."""

    async def reconfigure(self, cfg: Config) -> None:
        """A validated new config (SIGHUP); re-apply the role with it."""
        self.cfg = cfg
        await self.apply(self.wanted, force=True)

    def status(self) -> dict[str, Any]:
        return {
            "vip": {"address": self.cfg.registration.address or None, "held": False},
            "ca_pin": self.pins.status(),
        }

    async def leave(self) -> None:
        """``k3snoded leave``: nothing to hand over without a fleet; just stop k3s."""
        await self.apply(Wanted(Role.NONE, "", "left (k3snoded leave)"))

    async def apply(self, wanted: Wanted, *, force: bool = False) -> None:
        """Make ``wanted`` the target; log one sentence when it changes. The file work of a
        role change (agent state, token files, the remembered role) runs in a thread, off the
        loop. An agent is never started without the cluster CA hash (``capin.py``): until it
        is known, nothing is started, and an agent k3s already running is left alone."""
        pin = self.pin
        if wanted.role is Role.AGENT and not pin.ca_hash:
            self._wait_for_pin()
            return
        if wanted == self.wanted and pin == self._applied and not force:
            return
        spec = None
        if wanted.role is Role.AGENT:
            try:
                await asyncio.to_thread(capin.write_join_token, self.cfg, pin, self.key)
            except (OSError, TokenError) as err:  # retried at the next apply
                if str(err) != self._write_failed:
                    log.error("cannot write the agent's token file for k3s: %s", err)
                    self._write_failed = str(err)
                return
        if wanted.role is not Role.NONE:
            spec = k3s.child_spec(self.cfg, wanted.role, wanted.registration, pin=pin)
        changed = wanted.role != self.wanted.role or wanted.registration != self.wanted.registration
        if changed:
            log.info("role %s: %s", wanted.role.value, wanted.reason)
        if self.wanted.role is Role.AGENT and wanted.role is Role.SERVER:
            await asyncio.to_thread(k3s.clear_agent_state, self.cfg)
        mode_changed = pin.agent_token != self._applied.agent_token
        if (changed or mode_changed) and wanted.role is not Role.NONE:
            await asyncio.to_thread(remember_role, self.cfg, wanted, pin.agent_token)
        self.wanted, self._applied = wanted, pin
        self.supervisor.want(spec)

    def _wait_for_pin(self) -> None:
        if self.wanted.role is Role.SERVER:
            self.supervisor.want(None)  # a server told to be an agent stops even so
        if self.wanted.reason != WAITING_FOR_PIN:
            log.info("role none: %s", WAITING_FOR_PIN)
        self.wanted = Wanted(Role.NONE, "", WAITING_FOR_PIN)


def _role_file(cfg: Config) -> Path:
    return cfg.node.state_dir / "role.json"


def remember_role(cfg: Config, wanted: Wanted, agent_token: bool = False) -> None:
    """Persist the role (atomically) so a restart can resume it before the datastore answers,
    with whether k3s ran with the agent token (a server's command line depends on it)."""
    state = {"role": wanted.role.value, "registration": wanted.registration}
    try:
        write_json_state(_role_file(cfg), {**state, "agent_token": agent_token})
    except OSError as err:
        log.warning("cannot persist the role in %s: %s", cfg.node.state_dir, err)


def remembered_agent_token(cfg: Config) -> bool:
    return bool((read_json_state(_role_file(cfg)) or {}).get("agent_token"))


def remembered_role(cfg: Config) -> Wanted | None:
    data = read_json_state(_role_file(cfg))
    if not data:
        return None
    try:
        role = Role(data.get("role"))
    except ValueError:
        return None
    return Wanted(role, str(data.get("registration") or ""), "the role this node had before")


def static_role(cfg: Config, learned: str = "") -> Wanted:
    """The role of a node without a shared datastore (pure).

    ``learned`` is a registration address from signed announcements, for agent-only machines
    whose config omits it.
    """
    address = cfg.registration.address or learned
    if cfg.node.role is RolePreference.AGENT or (address and cfg.datastore.endpoint == ""):
        if not address:
            return Wanted(
                Role.NONE, "", "agent waiting to learn the registration address from peers"
            )
        return Wanted(Role.AGENT, address, f"agent joining https://{address}:6443")
    return Wanted(
        Role.SERVER,
        address or cfg.node.address,
        "single server on k3s's embedded datastore (no shared datastore configured)",
    )


class StaticRoles(RoleSource):
    def __init__(self, cfg: Config, supervisor: Supervisor, *, peers: PeerBook) -> None:
        super().__init__(cfg, supervisor, key=peers.key)
        self.peers = peers
        self.left = False

    async def run(self) -> None:
        await self.load_pin()
        while not self.left:
            wanted = static_role(self.cfg, self._learned())
            await self._learn_pin(wanted)
            await self.apply(wanted)
            self._stepped()
            poll = WAITING_POLL if self.wanted.role is Role.NONE else RUNNING_POLL
            await sleep_to_grid(poll)

    async def _learn_pin(self, wanted: Wanted) -> None:
        """A single server: its own CA (once ready), and the agent token when its k3s cluster
        was created with it. An agent: what servers announce."""
        if wanted.role is Role.SERVER:
            if not self._applied.agent_token and self.wanted.role is not Role.SERVER:
                used = await asyncio.to_thread(capin.server_takes_agent_token, self.cfg, self.key)
                self.pins.set_agent_token(used)
            if self.supervisor.status.ready and self.pins.learned.source != "k3s":
                mine = await asyncio.to_thread(capin.local_ca_hash, self.cfg)
                if mine:
                    self.pins.learn(mine, "k3s")
            return
        heard, alarm = capin.vote(self.peers.announced_pins())
        if alarm:
            self.pins.alarm("peers", alarm)
        elif heard is not None:
            self.pins.clear("peers")
            self.pins.set_agent_token(heard.agent_token)
            self.pins.learn(heard.ca_hash, "peers")

    def _learned(self) -> str:
        """A registration address learned from peers. Once an agent runs with one it keeps
        it: what peers announce changes with their health (without registration.address each
        server announces its own), and k3s's agent load balancer follows the servers anyway."""
        if self.wanted.role is Role.AGENT and self.wanted.registration:
            return self.wanted.registration
        return self.peers.registration() or ""

    async def leave(self) -> None:
        self.left = True
        await super().leave()

    async def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        await self.apply(static_role(cfg, self._learned()), force=True)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "peers": self.peers.status()}


def uses_fleet(cfg: Config) -> bool:
    """A shared MySQL/PostgreSQL datastore: the coordinator decides this machine's role."""
    return bool(cfg.datastore.endpoint) and not cfg.datastore.is_sqlite


def describe_role(cfg: Config) -> str:
    """What ``run`` does with this config, in one sentence (``check-config`` prints it)."""
    reg = cfg.registration
    if uses_fleet(cfg):
        if cfg.node.role is RolePreference.AGENT:
            where = reg.address or "a ready server of the fleet"
            return f"fleet member, always an agent (node.role agent), joining {where}"
        pinned = ", preferred (node.role server)" if cfg.node.role is RolePreference.SERVER else ""
        vip = (
            f"; holds the VIP {reg.address} (VRRP) while a server"
            if reg.vip.enabled and reg.address
            else ""
        )
        return (
            f"fleet member: the coordinator decides whether it is one of the "
            f"{cfg.servers.count} server(s){pinned}, else an agent{vip}"
        )
    return static_role(cfg).reason


def build_role_source(
    cfg: Config, supervisor: Supervisor, *, vip: VipKeeper, peers: PeerBook
) -> RoleSource:
    """Pick the role source for this config."""
    if uses_fleet(cfg):
        from k3snoded.fleet import FleetRoles

        return FleetRoles(cfg, supervisor, vip=vip, peers=peers)
    return StaticRoles(cfg, supervisor, peers=peers)
