"""Who runs a k3s server: a pure decision over what the datastore shows.

The coordinator (the holder of the ``coordinator`` lease) calls ``decide`` every cycle and writes
the result; every machine reconciles its own k3s to its assigned role. ``decide`` is pure: the same
view always gives the same decision, which is what makes it table-testable and what keeps roles
from swapping back and forth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from k3snoded.model import Decision, Member, Role, RolePreference


@dataclass(frozen=True)
class ElectionInput:
    """One coordinator cycle's view: members with their current assignment."""

    members: Sequence[Member]
    assigned: Mapping[str, Role]
    count: int
    dead_after: float


def _alive(m: Member, dead_after: float) -> bool:
    return m.heartbeat_age <= dead_after


def _rank(m: Member, assigned: Mapping[str, Role]) -> tuple[int, int, int, str]:
    """Lower sorts first: already a server, then pinned, then ready, then by name.

    "Already a server" is the assignment when there is one: a server replaced while it was
    frozen or cut off still runs k3s server when it comes back, and must not win its seat back
    from its replacement. What a member runs counts only before any assignment (a fleet whose
    roles are lost, or a coordinator's first decision)."""
    mine = assigned.get(m.name)
    already = 0 if (mine is Role.SERVER or (mine is None and m.role is Role.SERVER)) else 1
    pinned = 0 if m.preference is RolePreference.SERVER else 1
    ready = 0 if m.ready else 1
    return (already, pinned, ready, m.name)


def decide(inp: ElectionInput) -> Decision:
    """Keep ``count`` servers among eligible, live members; every other live member is an agent.

    Preference order: machines that already are servers (assigned, or running when not yet
    assigned), then
    ``role: server`` pins, then ready ones, then a stable order by name. A dead server (heartbeat
    older than ``dead_after``) is replaced and reassigned the agent role, so when it returns it
    takes whatever role the fleet needs instead of making one server too many.
    """
    live = [m for m in inp.members if _alive(m, inp.dead_after)]
    dead = {m.name for m in inp.members if not _alive(m, inp.dead_after)}
    eligible = sorted((m for m in live if m.eligible), key=lambda m: _rank(m, inp.assigned))
    servers = [m.name for m in eligible[: max(inp.count, 0)]]
    roles: dict[str, Role] = {m.name: Role.AGENT for m in live}
    for name in servers:
        roles[name] = Role.SERVER
    for name in dead:
        if inp.assigned.get(name) is Role.SERVER:
            roles[name] = Role.AGENT
        elif name in inp.assigned:
            roles[name] = inp.assigned[name]
    return Decision(roles=roles, reason=_explain(inp, servers, dead))


def _explain(inp: ElectionInput, servers: list[str], dead: set[str]) -> str:
    before = {n for n, r in inp.assigned.items() if r is Role.SERVER}
    added = [n for n in servers if n not in before]
    removed = sorted(before - set(servers))
    parts: list[str] = []
    if not before and servers:
        parts.append(f"elected servers {', '.join(servers)}")
    else:
        if added:
            parts.append(f"promoted {', '.join(added)} to server")
        for n in removed:
            why = "its heartbeat stopped" if n in dead else "servers.count is lower"
            parts.append(f"demoted {n} because {why}")
    if len(servers) < inp.count:
        parts.append(
            f"only {len(servers)} of {inp.count} servers possible: "
            "not enough live machines with datastore credentials"
        )
    if not parts:
        return f"kept servers {', '.join(servers) or 'none'}"
    return "; ".join(parts)
