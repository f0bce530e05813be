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

from k3snoded import k3s
from k3snoded.atomic import read_json_state, write_json_state
from k3snoded.config import Config
from k3snoded.model import Role, RolePreference
from k3snoded.peers import PeerBook
from k3snoded.process import ChildSpec, ChildStatus
from k3snoded.supervisor import Supervisor
from k3snoded.vip import VipKeeper

log = logging.getLogger("k3snoded.roles")


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


class RoleSource(abc.ABC):
    """Decides this node's role and drives the supervisor to it (level-triggered)."""

    def __init__(self, cfg: Config, supervisor: ChildControl) -> None:
        self.cfg = cfg
        self.supervisor = supervisor
        self.wanted = Wanted()

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
        return {"vip": {"address": self.cfg.registration.address or None, "held": False}}

    async def leave(self) -> None:
        """``k3snoded leave``: nothing to hand over without a fleet; just stop k3s."""
        await self.apply(Wanted(Role.NONE, "", "left (k3snoded leave)"))

    async def apply(self, wanted: Wanted, *, force: bool = False) -> None:
        """Make ``wanted`` the target; log one sentence when it changes. The file work of a
        role change (agent state, the remembered role) runs in a thread, off the loop."""
        if wanted == self.wanted and not force:
            return
        changed = wanted.role != self.wanted.role or wanted.registration != self.wanted.registration
        if changed:
            log.info("role %s: %s", wanted.role.value, wanted.reason)
        if self.wanted.role is Role.AGENT and wanted.role is Role.SERVER:
            await asyncio.to_thread(k3s.clear_agent_state, self.cfg)
        if changed and wanted.role is not Role.NONE:
            await asyncio.to_thread(remember_role, self.cfg, wanted)
        self.wanted = wanted
        if wanted.role is Role.NONE:
            self.supervisor.want(None)
        else:
            self.supervisor.want(k3s.child_spec(self.cfg, wanted.role, wanted.registration))


def _role_file(cfg: Config) -> Path:
    return cfg.node.state_dir / "role.json"


def remember_role(cfg: Config, wanted: Wanted) -> None:
    """Persist the role (atomically) so a restart can resume it before the datastore answers."""
    try:
        write_json_state(
            _role_file(cfg), {"role": wanted.role.value, "registration": wanted.registration}
        )
    except OSError as err:
        log.warning("cannot persist the role in %s: %s", cfg.node.state_dir, err)


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
        super().__init__(cfg, supervisor)
        self.peers = peers
        self.left = False

    async def run(self) -> None:
        while not self.left:
            await self.apply(static_role(self.cfg, self._learned()))
            await asyncio.sleep(1.0)

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
