"""Planned operations wired into a daemon (the composition root calls ``attach``).

A fleet member (``FleetRoles``) gets an ``Operations`` with the real parts: the k3s binary
(``binaries.K3sBinary``), the Kubernetes API through this machine or a ready server
(``drain.KubeGateway``), and signed peer requests to other members, addressed from the member
table. A machine without the datastore (an agent-only machine) carries out nothing itself: it
passes requests to a server it discovered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from k3snoded import ops_api
from k3snoded.binaries import K3sBinary
from k3snoded.drain import KubeGateway
from k3snoded.model import Role
from k3snoded.peers import PeerBook
from k3snoded.roles import RoleSource

log = logging.getLogger("k3snoded.operations")

Handler = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]


def attach(roles: RoleSource, peers: PeerBook) -> Handler:
    """Give ``roles`` its operations (a fleet member); return the request handler."""
    from k3snoded.fleet import FleetRoles

    if not isinstance(roles, FleetRoles):
        return _forwarder(peers)
    fleet = roles

    def base(name: str) -> str:
        member = next((m for m in fleet.members if m.name == name), None)
        if member is None or not member.api_port or not member.address:
            raise ops_api.OpsError(f"{name} has no peer API this machine knows of")
        host = f"[{member.address}]" if ":" in member.address else member.address
        return f"http://{host}:{member.api_port}"

    async def ask(name: str, req: dict[str, Any]) -> dict[str, Any]:
        return await ops_api.call(base(name), peers.key, req, limit=_limit(req))

    async def remote_kube(req: dict[str, Any]) -> str:
        """A cordon or drain done by a ready server (this machine has no admin certificate)."""
        dead_after = fleet.cfg.coordination.dead_after
        servers = [
            m.name
            for m in fleet.members
            if fleet.assigned.get(m.name) is Role.SERVER
            and m.ready
            and m.heartbeat_age <= dead_after
            and m.name != fleet.me
        ]
        why = "no ready server to ask"
        for name in servers:
            try:
                answer = await ask(name, {"action": "kube", **req})
            except ops_api.OpsError as exc:
                why = str(exc)
                continue
            if answer.get("ok"):
                return str(answer.get("result", ""))
            why = str(answer.get("why", "refused"))
        raise ops_api.OpsError(f"{req.get('op')} of {req.get('node')} through a server: {why}")

    kube = KubeGateway(
        lambda: fleet.cfg,
        lambda: fleet.wanted.role,
        lambda: fleet.supervisor.status.ready,
        remote_kube,
    )
    from k3snoded.operations import Operations

    ask_or_none = ask if fleet.cfg.api.listen else None
    fleet.ops = Operations(fleet, binary=K3sBinary(lambda: fleet.cfg), kube=kube, ask=ask_or_none)
    return fleet.ops.handle


def _limit(req: dict[str, Any]) -> float:
    """A drain through a server takes as long as its timeout; everything else is quick."""
    if req.get("action") == "kube":
        return float(req.get("timeout", 0.0)) + 30.0
    if req.get("action") in ("switchover", "maintenance"):
        return 30.0
    return 10.0


def _forwarder(peers: PeerBook) -> Handler:
    async def forward(req: dict[str, Any], via: str) -> dict[str, Any]:
        if req.get("forwarded"):
            return {"ok": False, "why": "this machine has no datastore"}
        servers = [p for p in peers.peers() if p.role is Role.SERVER and p.api_port and p.addresses]
        why = "no server of the fleet was discovered from this machine"
        for p in servers:
            url = f"http://{p.addresses[0]}:{p.api_port}"
            fwd = {**req, "by": req.get("by") or via}
            try:
                return await ops_api.call(url, peers.key, fwd, limit=_limit(req))
            except ops_api.OpsError as exc:
                why = str(exc)
        log.warning("cannot pass on the request %s: %s", req.get("action"), why)
        return {"ok": False, "why": why}

    return forward
