"""Who runs a k3s server: a pure decision over what the datastore shows.

The coordinator (the holder of the ``coordinator`` lease) calls ``decide`` every cycle and writes
the result; every machine reconciles its own k3s to its assigned role. ``decide`` is pure: the same
view always gives the same decision, which is what makes it table-testable and what keeps roles
from swapping back and forth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from k3snoded.model import Decision, Member, Role, RolePreference


@dataclass(frozen=True)
class ElectionInput:
    """One coordinator cycle's view: members with their current assignment."""

    members: Sequence[Member]
    assigned: Mapping[str, Role]
    count: int
    dead_after: float
    # Seconds each assigned server has gone without a ready k3s, as the coordinator watched;
    # one past ``unready_after`` (k3s.ready_timeout) loses its seat to a ready machine.
    unready: Mapping[str, float] = field(default_factory=dict)
    unready_after: float = math.inf
    # Members lately demoted for that: ranked last, so the seat does not come straight back.
    avoid: frozenset[str] = frozenset()


def _alive(m: Member, dead_after: float) -> bool:
    return m.heartbeat_age <= dead_after


def _rank(
    m: Member, assigned: Mapping[str, Role], failing: set[str]
) -> tuple[int, int, int, int, str]:
    """Lower sorts first: not failing, already a server, then pinned, then ready, then by name.

    "Already a server" is the assignment when there is one: a server replaced while it was
    frozen or cut off still runs k3s server when it comes back, and must not win its seat back
    from its replacement. What a member runs counts only before any assignment (a fleet whose
    roles are lost, or a coordinator's first decision)."""
    mine = assigned.get(m.name)
    already = 0 if (mine is Role.SERVER or (mine is None and m.role is Role.SERVER)) else 1
    pinned = 0 if m.preference is RolePreference.SERVER else 1
    ready = 0 if m.ready else 1
    return (1 if m.name in failing else 0, already, pinned, ready, m.name)


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
    failing = _failing(inp, live)
    last = failing | (inp.avoid - {n for n, r in inp.assigned.items() if r is Role.SERVER})
    eligible = sorted((m for m in live if m.eligible), key=lambda m: _rank(m, inp.assigned, last))
    servers = [m.name for m in eligible[: max(inp.count, 0)]]
    roles: dict[str, Role] = {m.name: Role.AGENT for m in live}
    for name in servers:
        roles[name] = Role.SERVER
    for name in dead:
        if inp.assigned.get(name) is Role.SERVER:
            roles[name] = Role.AGENT
        elif name in inp.assigned:
            roles[name] = inp.assigned[name]
    # A server that stepped out unready (a first server whose k3s failed to come up pauses
    # its eligibility) failed too: when its pause ends it must not win the seat straight back.
    stepped_out = {
        m.name
        for m in live
        if inp.assigned.get(m.name) is Role.SERVER and not m.eligible and not m.ready
    }
    failed = frozenset(n for n in failing | stepped_out if roles.get(n) is not Role.SERVER)
    return Decision(roles=roles, reason=_explain(inp, servers, dead, failing), failed=failed)


def _failing(inp: ElectionInput, live: list[Member]) -> set[str]:
    """Servers whose k3s has not been ready for ``unready_after``, when another machine could
    take the seat: a ready eligible one, or, when no server is ready at all (so no agent can be
    ready either), any eligible one: the seat goes round until a k3s comes up."""
    failing = {
        m.name
        for m in live
        if inp.assigned.get(m.name) is Role.SERVER
        and not m.ready
        and inp.unready.get(m.name, 0.0) >= inp.unready_after
    }
    others = [m for m in live if m.eligible and inp.assigned.get(m.name) is not Role.SERVER]
    none_ready = not any(m.ready for m in live if inp.assigned.get(m.name) is Role.SERVER)
    standby = any(m.ready for m in others) or (none_ready and bool(others))
    return failing if standby else set()


def _explain(inp: ElectionInput, servers: list[str], dead: set[str], failing: set[str]) -> str:
    before = {n for n, r in inp.assigned.items() if r is Role.SERVER}
    added = [n for n in servers if n not in before]
    removed = sorted(before - set(servers))
    parts: list[str] = []
    if not before and servers:
        parts.append(f"elected servers {', '.join(servers)}")
    else:
        if added:
            parts.append(f"promoted {', '.join(added)} to server")
        members = {m.name: m for m in inp.members}
        for n in removed:
            if n in dead:
                why = "its heartbeat stopped"
            elif n in failing:
                why = (
                    f"its k3s has not been ready for {inp.unready.get(n, 0.0):.0f} s "
                    "(k3s.ready_timeout) and a ready machine can take its seat"
                )
            elif n in members and not members[n].eligible:
                why = (
                    "it may not be a server now (leaving, node.role agent, or pausing after "
                    "its k3s failed to come up as the first server)"
                )
            else:
                why = f"servers.count is lower ({inp.count})"
            parts.append(f"demoted {n} because {why}")
    if len(servers) < inp.count:
        parts.append(
            f"only {len(servers)} of {inp.count} servers possible: "
            "not enough live machines with datastore credentials"
        )
    if not parts:
        return f"kept servers {', '.join(servers) or 'none'}"
    return "; ".join(parts)
