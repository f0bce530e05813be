"""Rolling k3s upgrades: the coordinator's plan, a pure function of what the datastore shows.

The target is the coordinator's ``k3s.version`` (with ``k3s.install: auto``); every machine
reports the release its binary is in its heartbeat. Each coordinator cycle, ``plan`` reads the
stored ``ops/rollout`` document, the machines' own ``ops/upgrade/<node>`` progress and the
member table, and says what the document should now be, with one sentence:

* a machine older than the target is **granted** its upgrade (its own daemon then does the
  steps, ``upgrader.py``); servers first, **one at a time**, and only while every other server
  is ready, the VIP holder last (so the VIP moves once); then agents, ``upgrade.agent_batch``
  at a time, and only once every live server runs the target (k3s's version-skew rule: no
  kubelet newer than an apiserver);
* a machine that reports ``done`` leaves the grants; one that reports ``failed`` (it has rolled
  itself back) **halts** the rollout until the target changes; a granted machine whose
  heartbeat stops is **skipped** and granted again when it returns (it resumes its steps);
* nothing is granted while the fleet is paused or to a machine in maintenance;
* never a downgrade: only machines older than the target are touched.

``decide_with_skew`` keeps the version-skew rule in the coordinator's decisions: a machine
older than an agent-to-be is not promoted to server (the one already a server keeps its seat),
and a machine being upgraded is neither promoted (its release is not settled) nor demoted for
its k3s being down on purpose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from k3snoded.election import ElectionInput, decide
from k3snoded.model import Decision, Member, Role, RolePreference
from k3snoded.opsstate import (
    DONE,
    EARLY,
    HALTED,
    RUNNING,
    STEP_DONE,
    STEP_FAILED,
    Progress,
    Rollout,
)
from k3snoded.versions import newest, older, parse_release


@dataclass(frozen=True)
class RolloutInput:
    target: str  # the coordinator's k3s.version with install auto; "" for none
    current: Rollout | None
    progress: Mapping[str, Progress]
    members: Sequence[Member]
    versions: Mapping[str, str]  # each member's k3s release, from its heartbeat
    assigned: Mapping[str, Role]
    dead_after: float
    coordinator: str
    now: float  # wall clock, recorded as started_at
    maintenance: frozenset[str] = frozenset()
    paused: bool = False
    agent_batch: int = 1
    vip_holder: str | None = None


@dataclass(frozen=True)
class RolloutDecision:
    rollout: Rollout | None  # the document to write; None: keep the stored one
    sentence: str = ""  # what changed ("" when nothing did)


def plan(inp: RolloutInput) -> RolloutDecision:
    target = inp.target
    if not target or parse_release(target) is None:
        return RolloutDecision(None)
    live = {m.name: m for m in inp.members if m.heartbeat_age <= inp.dead_after}

    def behind(name: str) -> bool:
        return older(inp.versions.get(name, ""), target)

    cur = inp.current
    said: list[str] = []
    if cur is None or cur.target != target:
        if not any(behind(n) for n in live):
            return RolloutDecision(None)
        cur = Rollout(target, RUNNING, by=inp.coordinator, started_at=inp.now)
        said.append(f"rolling k3s upgrade to {target} started")
    if cur.state == HALTED:
        return RolloutDecision(None)
    grants = list(cur.grants)
    for name in cur.grants:
        p = inp.progress.get(name)
        step = p.step if p is not None and p.target == target else ""
        if step == STEP_FAILED:
            assert p is not None
            note = f"halted: {name} did not come back on {target} ({p.error}); it was rolled back"
            halted = dataclasses.replace(
                cur,
                state=HALTED,
                grants=(),
                halted_node=name,
                halted_error=p.error,
                note=note,
            )
            return RolloutDecision(halted, note)
        if step == STEP_DONE and not behind(name):
            grants.remove(name)
            said.append(f"{name} runs {target}")
        elif name not in live:
            grants.remove(name)
            said.append(f"skipped {name} for now: its heartbeat stopped")
        elif name in inp.maintenance and step in EARLY:
            grants.remove(name)
            said.append(f"skipped {name} for now: in maintenance")
        elif step in EARLY and _agent_ahead_of_servers(inp, live, behind, name):
            grants.remove(name)
            said.append(f"{name} is an agent now: upgraded after every server")
        elif step != STEP_DONE and _agent_ahead_of_servers(inp, live, behind, name):
            # Demoted after its binary was swapped: it waits, stopped, for the servers to
            # run the target, and finishes its upgrade on its own then (upgrader.py).
            grants.remove(name)
            said.append(f"{name} is an agent now: its upgrade ends once the servers run {target}")
    state = RUNNING
    if not grants and not inp.paused:
        grants, why = _next(inp, live, behind)
        if why:
            said.append(why)
        if not grants and not any(behind(n) for n in live):
            state = DONE
            pending = sorted(n for n in inp.versions if behind(n))
            tail = f" ({', '.join(pending)} when they return)" if pending else ""
            if cur.state != DONE:
                said.append(f"every live machine runs {target}{tail}")
    new = dataclasses.replace(cur, state=state, grants=tuple(grants))
    if said:
        new = dataclasses.replace(new, note="; ".join(said))
    if new == inp.current:
        return RolloutDecision(None)
    return RolloutDecision(new, "; ".join(said))


def _agent_ahead_of_servers(
    inp: RolloutInput, live: Mapping[str, Member], behind: Callable[[str], bool], name: str
) -> bool:
    """A granted machine the election has made an agent (a server demoted since its grant),
    while a live server still runs an older release: upgraded now, it could not run (k3s's
    version-skew rule)."""
    if inp.assigned.get(name) is Role.SERVER:
        return False
    return any(n != name and inp.assigned.get(n) is Role.SERVER and behind(n) for n in live)


def _next(
    inp: RolloutInput, live: Mapping[str, Member], behind: Callable[[str], bool]
) -> tuple[list[str], str]:
    """Whom to grant next, and why (or why nobody)."""
    servers = sorted(n for n in live if inp.assigned.get(n) is Role.SERVER)
    waiting = [n for n in servers if behind(n) and n not in inp.maintenance]
    if waiting:
        # The VIP holder last (the VIP then moves once), the coordinator before it.
        waiting.sort(key=lambda n: (n == inp.vip_holder, n == inp.coordinator, n))
        for name in waiting:
            if all(live[o].ready for o in servers if o != name):
                return [name], f"upgrading server {name}"
        return [], ""  # another server is not ready: wait (its own problem is reported)
    unknown = [n for n in servers if parse_release(inp.versions.get(n, "")) is None]
    if unknown:
        return [], f"agents wait: server(s) {', '.join(unknown)} report no k3s version"
    agents = sorted(
        n
        for n in live
        if inp.assigned.get(n) is not Role.SERVER and behind(n) and n not in inp.maintenance
    )
    batch = agents[: max(1, inp.agent_batch)]
    if batch:
        return batch, f"upgrading agent(s) {', '.join(batch)}"
    return [], ""


def in_upgrade(r: Rollout, progress: Mapping[str, Progress]) -> tuple[str, ...]:
    """The machines being upgraded: those granted, and those past their restart for the
    target that left the grants meanwhile (an agent waiting for the servers; a machine whose
    heartbeat stopped): their release is settled only when their upgrade ends."""
    started = sorted(
        n
        for n, p in progress.items()
        if p.target == r.target
        and p.step not in (*EARLY, STEP_DONE, STEP_FAILED)
        and n not in r.grants
    )
    return (*r.grants, *started)


def settled_version(
    name: str, versions: Mapping[str, str], progress: Mapping[str, Progress]
) -> str:
    """A machine's release for the version-skew rule: what its heartbeat reports, except while
    its upgrade is under way: its heartbeat reports the new release once the binary is
    swapped, but until the upgrade ends it may be rolled back, so it counts as the release it
    upgrades from (an agent started beside it meanwhile would have to stop again)."""
    v = versions.get(name, "")
    p = progress.get(name)
    if p is not None and p.step not in (STEP_DONE, STEP_FAILED) and older(p.from_version, v):
        return p.from_version
    return v


def decide_with_skew(
    inp: ElectionInput, versions: Mapping[str, str], upgrading: Sequence[str], target: str
) -> Decision:
    """``election.decide`` keeping k3s's version-skew rule: a machine older than a live machine
    that will be an agent (one already assigned agent, or a server this very decision demotes)
    is not promoted to server; the servers already seated keep their seats. An agent granted
    an upgrade counts as already on ``target`` (its heartbeat says so only once its binary is
    swapped). A machine being upgraded is neither promoted (its release is not settled) nor
    demoted for its k3s being down on purpose."""
    effective = dict(versions)
    for name in upgrading:
        if older(effective.get(name, ""), target):
            effective[name] = target
    unready = {n: t for n, t in inp.unready.items() if n not in upgrading}
    # A server being upgraded keeps its seat, ranked as a ready pinned one (servers.count
    # lowered meanwhile demotes another): demoted, it could not run as an agent newer than
    # the servers left.
    seated = {n for n in upgrading if inp.assigned.get(n) is Role.SERVER}
    live = {m.name for m in inp.members if m.heartbeat_age <= inp.dead_after}
    members = [dataclasses.replace(m, ready=True, preference=RolePreference.SERVER)
               if m.name in seated else m for m in inp.members]  # fmt: skip
    # An agent that stopped its k3s only for the skew rule (a live server runs an older
    # release) could run as a server: a ready standby for a seat that fails.
    old_servers = [versions.get(n, "") for n in live if inp.assigned.get(n) is Role.SERVER]
    members = [dataclasses.replace(m, ready=True)
               if m.name in live and m.eligible and not m.ready
               and inp.assigned.get(m.name) is not Role.SERVER
               and any(older(v, versions.get(m.name, "")) for v in old_servers)
               else m for m in members]  # fmt: skip
    inp = dataclasses.replace(inp, unready=unready, members=members)
    # A machine being upgraded is not promoted: its release is settled only when its upgrade
    # ends (it may yet be rolled back to an older one than the agents run).
    barred = {n for n in upgrading if inp.assigned.get(n) is not Role.SERVER}
    members = [dataclasses.replace(m, eligible=False) if m.name in barred else m
               for m in inp.members]  # fmt: skip
    d = decide(dataclasses.replace(inp, members=members))
    for _ in range(len(inp.members) + 1):
        agents = [n for n in live if d.roles.get(n) is not Role.SERVER]
        top = newest([effective.get(n, "") for n in agents])
        new = {
            n
            for n, role in d.roles.items()
            if role is Role.SERVER
            and inp.assigned.get(n) is not Role.SERVER
            and top is not None
            and older(versions.get(n, ""), top)
        }
        if not new - barred:
            return d
        barred |= new
        members = [dataclasses.replace(m, eligible=False) if m.name in barred else m
                   for m in inp.members]  # fmt: skip
        d = decide(dataclasses.replace(inp, members=members))
    return d
