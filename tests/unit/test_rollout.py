"""The coordinator's rollout plan (k3snoded/rollout.py): pure, table-tested."""

from __future__ import annotations

import dataclasses

from k3snoded.election import ElectionInput, decide
from k3snoded.model import Member, Role, RolePreference
from k3snoded.opsstate import DONE, HALTED, RUNNING, Progress, Rollout
from k3snoded.rollout import RolloutInput, decide_with_skew, in_upgrade, plan, settled_version

OLD, NEW = "v1.31.4+k3s1", "v1.31.5+k3s1"


def _m(name: str, *, ready: bool = True, age: float = 1.0, role: Role = Role.SERVER) -> Member:
    return Member(name, "10.0.0.1", RolePreference.AUTO, True, role, ready, age)


SERVERS = ("s1", "s2", "s3")
AGENTS = ("a1", "a2", "a3")


def _inp(**kw: object) -> RolloutInput:
    members = [_m(n) for n in SERVERS] + [_m(n, role=Role.AGENT) for n in AGENTS]
    base: dict[str, object] = {
        "target": NEW,
        "current": None,
        "progress": {},
        "members": members,
        "versions": dict.fromkeys((*SERVERS, *AGENTS), OLD),
        "assigned": {**dict.fromkeys(SERVERS, Role.SERVER), **dict.fromkeys(AGENTS, Role.AGENT)},
        "dead_after": 10.0,
        "coordinator": "s1",
        "now": 100.0,
    }
    base.update(kw)
    return RolloutInput(**base)  # type: ignore[arg-type]


def _done(name: str) -> Progress:
    return Progress(name, NEW, OLD, "done")


def test_nothing_to_do_without_a_target_or_when_everyone_runs_it() -> None:
    assert plan(_inp(target="")).rollout is None
    everyone = dict.fromkeys((*SERVERS, *AGENTS), NEW)
    assert plan(_inp(versions=everyone)).rollout is None


def test_never_a_downgrade() -> None:
    newer = dict.fromkeys((*SERVERS, *AGENTS), "v1.32.0+k3s1")
    assert plan(_inp(versions=newer)).rollout is None


def test_servers_one_at_a_time_the_vip_holder_last_then_agents_in_batches() -> None:
    versions = dict.fromkeys((*SERVERS, *AGENTS), OLD)
    inp = _inp(vip_holder="s2", agent_batch=2)
    d = plan(inp)
    assert d.rollout is not None and d.rollout.state == RUNNING
    assert d.rollout.grants == ("s3",)  # not the holder, not the coordinator
    assert "started" in d.sentence and "upgrading server s3" in d.sentence
    order = []
    cur = d.rollout
    for _ in range(10):
        (name,) = cur.grants if len(cur.grants) == 1 else (None,)
        if name is None:
            break
        order.append(name)
        versions[name] = NEW
        nxt = plan(
            dataclasses.replace(
                inp, current=cur, versions=dict(versions), progress={name: _done(name)}
            )
        )
        assert nxt.rollout is not None
        cur = nxt.rollout
    assert order == ["s3", "s1", "s2"]
    assert cur.grants == ("a1", "a2")  # agents only once every server runs the target
    for n in ("a1", "a2"):
        versions[n] = NEW
    last = plan(
        dataclasses.replace(
            inp,
            current=cur,
            versions=dict(versions),
            progress={"a1": _done("a1"), "a2": _done("a2")},
        )
    )
    assert last.rollout is not None and last.rollout.grants == ("a3",)
    versions["a3"] = NEW
    end = plan(
        dataclasses.replace(
            inp, current=last.rollout, versions=dict(versions), progress={"a3": _done("a3")}
        )
    )
    assert end.rollout is not None and end.rollout.state == DONE and end.rollout.grants == ()
    again = plan(dataclasses.replace(inp, current=end.rollout, versions=dict(versions)))
    assert again.rollout is None  # done stays done: nothing written


def test_a_server_is_not_taken_down_while_another_is_not_ready() -> None:
    members = [_m("s1"), _m("s2", ready=False), _m("s3"), _m("a1", role=Role.AGENT)]
    d = plan(_inp(members=members))
    assert d.rollout is not None
    assert d.rollout.grants == ("s2",)  # the unready one itself may go: the others are ready
    members = [_m("s1"), _m("s2", ready=False), _m("s3", ready=False)]
    versions = {"s1": NEW, "s2": OLD, "s3": OLD}
    assert plan(_inp(members=members, versions=versions)).rollout is not None
    cur = Rollout(NEW, RUNNING)
    stuck = plan(_inp(members=members, versions=versions, current=cur))
    assert stuck.rollout is None  # s2 and s3 wait for each other to be ready: nobody goes


def test_a_failed_machine_halts_the_rollout_until_the_target_changes() -> None:
    cur = Rollout(NEW, RUNNING, grants=("s3",))
    failed = {"s3": Progress("s3", NEW, OLD, "failed", 0.0, "k3s exited 3 times")}
    d = plan(_inp(current=cur, progress=failed))
    assert d.rollout is not None and d.rollout.state == HALTED and d.rollout.grants == ()
    assert d.rollout.halted_node == "s3" and "k3s exited" in d.sentence
    assert plan(_inp(current=d.rollout, progress=failed)).rollout is None  # stays halted
    fixed = plan(_inp(current=d.rollout, progress=failed, target="v1.31.6+k3s1"))
    assert fixed.rollout is not None and fixed.rollout.state == RUNNING
    assert fixed.rollout.target == "v1.31.6+k3s1"


def test_dead_machines_are_skipped_and_upgraded_when_they_return() -> None:
    members = [_m("s1"), _m("s2"), _m("s3", age=60.0)]
    versions = {"s1": NEW, "s2": NEW, "s3": OLD}
    cur = Rollout(NEW, RUNNING, grants=("s3",))
    d = plan(_inp(members=members, versions=versions, current=cur, assigned={}))
    assert d.rollout is not None and d.rollout.grants == () and "skipped s3" in d.sentence
    assert d.rollout.state == DONE and "s3 when they return" in d.sentence
    back = [_m("s1"), _m("s2"), _m("s3")]
    assigned = dict.fromkeys(("s1", "s2"), Role.SERVER) | {"s3": Role.AGENT}
    r = plan(_inp(members=back, versions=versions, current=d.rollout, assigned=assigned))
    assert r.rollout is not None and r.rollout.state == RUNNING and r.rollout.grants == ("s3",)


def test_pause_and_maintenance_hold_grants_back() -> None:
    assert plan(_inp(paused=True)).rollout is not None  # recorded, but nobody granted
    assert plan(_inp(paused=True)).rollout.grants == ()  # type: ignore[union-attr]
    d = plan(_inp(maintenance=frozenset({"s3", "s2"})))
    assert d.rollout is not None and d.rollout.grants == ("s1",)


def test_agents_wait_for_servers_that_report_no_version() -> None:
    versions = {"s1": NEW, "s2": NEW, "s3": "", "a1": OLD}
    d = plan(_inp(versions=versions))
    assert d.rollout is not None and d.rollout.grants == ()
    assert "report no k3s version" in d.sentence


def test_the_election_keeps_the_skew_rule_and_spares_upgrading_servers() -> None:
    members = [_m("s1"), _m("s2"), _m("x", role=Role.AGENT), _m("a1", role=Role.AGENT)]
    assigned = {"s1": Role.SERVER, "s2": Role.SERVER, "x": Role.AGENT, "a1": Role.AGENT}
    versions = {"s1": NEW, "s2": NEW, "x": OLD, "a1": NEW}
    members[1] = dataclasses.replace(members[1], heartbeat_age=60.0)  # s2 died
    inp = ElectionInput(members, assigned, count=2, dead_after=10.0)
    d = decide_with_skew(inp, versions, (), "")
    assert d.roles["x"] is Role.AGENT  # older than an agent: not promoted
    assert d.roles["a1"] is Role.SERVER
    assert d.roles["s1"] is Role.SERVER
    members = [_m("s1", ready=False), _m("s2"), _m("a1", role=Role.AGENT)]
    inp = ElectionInput(
        members,
        {"s1": Role.SERVER, "s2": Role.SERVER, "a1": Role.AGENT},
        count=2,
        dead_after=10.0,
        unready={"s1": 999.0},
        unready_after=300.0,
    )
    assert decide(inp).roles["s1"] is Role.AGENT  # without the rollout: demoted
    assert decide_with_skew(inp, {}, ("s1",), NEW).roles["s1"] is Role.SERVER


def test_an_agent_being_upgraded_counts_as_on_the_target() -> None:
    """Found by the simulator (seed 102, generation 3): an agent granted its upgrade reported
    the old release (its binary not yet swapped, its k3s restarting: role none), so a machine
    on the old release returning from a crash was promoted to server under the new agent."""
    a1 = dataclasses.replace(_m("a1", role=Role.NONE), eligible=False)  # node.role agent
    members = [_m("s1"), _m("back", role=Role.AGENT), a1]
    assigned = {"s1": Role.SERVER, "back": Role.AGENT, "a1": Role.AGENT}
    versions = {"s1": NEW, "back": OLD, "a1": OLD}
    inp = ElectionInput(members, assigned, count=2, dead_after=10.0)
    assert decide_with_skew(inp, versions, (), "").roles["back"] is Role.SERVER
    assert decide_with_skew(inp, versions, ("a1",), NEW).roles["back"] is Role.AGENT


def test_a_server_demoted_now_counts_as_an_agent_for_the_skew_rule() -> None:
    """Found by the simulator (seed 586, generation 5): the only server, already upgraded, went
    into maintenance, and an agent on the old release was promoted in its place: the upgraded
    machine then ran as an agent newer than the server."""
    s1 = dataclasses.replace(_m("s1"), eligible=False)  # in maintenance
    members = [s1, _m("a1", role=Role.AGENT), _m("a2", role=Role.AGENT)]
    assigned = {"s1": Role.SERVER, "a1": Role.AGENT, "a2": Role.AGENT}
    versions = {"s1": NEW, "a1": OLD, "a2": NEW}
    inp = ElectionInput(members, assigned, count=1, dead_after=10.0)
    assert decide(inp).roles["a1"] is Role.SERVER  # by name, without the rule
    d = decide_with_skew(inp, versions, (), "")
    assert d.roles["a2"] is Role.SERVER and d.roles["a1"] is Role.AGENT
    versions["a2"] = OLD  # nobody is as new as s1: nobody is promoted under it
    d = decide_with_skew(inp, versions, (), "")
    assert [n for n, r in d.roles.items() if r is Role.SERVER] == []


def test_a_candidate_being_upgraded_counts_as_what_it_runs() -> None:
    """Found by the simulator (seed 102 again): an agent granted its upgrade (still on the old
    release) was promoted while another agent already ran the new one."""
    a2 = dataclasses.replace(_m("a2", role=Role.AGENT), eligible=False)
    members = [_m("s1"), _m("a1", role=Role.AGENT), a2]
    assigned = {"s1": Role.SERVER, "a1": Role.AGENT, "a2": Role.AGENT}
    versions = {"s1": NEW, "a1": OLD, "a2": NEW}
    inp = ElectionInput(members, assigned, count=2, dead_after=10.0)
    d = decide_with_skew(inp, versions, ("a1",), NEW)
    assert d.roles["a1"] is Role.AGENT  # promoted once it runs NEW, not before


def test_a_granted_server_demoted_to_agent_waits_for_the_servers() -> None:
    """Found by the simulator (seed 1173, generation 5): s1 was granted its upgrade as a server
    and demoted to agent in the same coordinator cycle (its heartbeat had stopped); it went on
    upgrading as an agent while s2 still ran the old release, could not run (the version-skew
    rule), failed and halted the rollout. Before its k3s is touched the grant goes; it is
    upgraded with the agents, once every server runs the target."""
    assigned = {**dict.fromkeys(SERVERS, Role.SERVER), **dict.fromkeys(AGENTS, Role.AGENT)}
    assigned["s1"] = Role.AGENT
    cur = Rollout(NEW, RUNNING, grants=("s1",))
    for step in ("granted", "draining", "downloading"):
        progress = {"s1": Progress("s1", NEW, OLD, step)}
        d = plan(_inp(current=cur, progress=progress, assigned=assigned))
        assert d.rollout is not None and "s1" not in d.rollout.grants, step
        assert "s1" in d.sentence
    # Its k3s already restarted on the new release: it finishes on its own once it may run
    # (upgrader.py); the grant goes, so that the servers it waits for are upgraded.
    progress = {"s1": Progress("s1", NEW, OLD, "starting")}
    d = plan(_inp(current=cur, progress=progress, assigned=assigned))
    assert d.rollout is not None and d.rollout.grants == ("s2",)
    # Once every other server runs the target, an agent's grant is a grant like any other.
    versions = {**dict.fromkeys((*SERVERS, *AGENTS), OLD), "s2": NEW, "s3": NEW}
    progress = {"s1": Progress("s1", NEW, OLD, "downloading")}
    d = plan(_inp(current=cur, progress=progress, assigned=assigned, versions=versions))
    assert d.rollout is None or "s1" in d.rollout.grants


def test_a_machine_being_upgraded_is_not_promoted() -> None:
    """Found by the simulator (seed 511, generation 5): an agent granted its upgrade already
    reported the new release (its binary swapped) and was promoted to server; its new k3s then
    failed and was rolled back, leaving a server older than an upgraded agent (which had to
    stop). Its release is settled only once its upgrade ends: until then it is not promoted."""
    members = [_m("s1"), _m("s2", age=60.0), _m("a1", role=Role.AGENT), _m("a2", role=Role.AGENT)]
    assigned = {"s1": Role.SERVER, "s2": Role.SERVER, "a1": Role.AGENT, "a2": Role.AGENT}
    versions = dict.fromkeys(("s1", "s2", "a1", "a2"), NEW)
    inp = ElectionInput(members, assigned, count=2, dead_after=10.0)
    assert decide_with_skew(inp, versions, (), "").roles["a1"] is Role.SERVER  # s2 replaced
    d = decide_with_skew(inp, versions, ("a1",), NEW)
    assert d.roles["a1"] is Role.AGENT and d.roles["a2"] is Role.SERVER


def test_a_server_being_upgraded_keeps_its_seat_when_servers_count_drops() -> None:
    """Found by the simulator (seed 1098, generation 5): servers.count went from 2 to 1 while
    s2 was restarting on the new release; the election demoted s2 (not ready), which then could
    not run as an agent newer than s1 (the version-skew rule), failed its upgrade and halted the
    rollout. The server being upgraded keeps its seat; the other one goes."""
    members = [_m("s1"), _m("s2", ready=False), _m("a1", role=Role.AGENT)]
    assigned = {"s1": Role.SERVER, "s2": Role.SERVER, "a1": Role.AGENT}
    versions = {"s1": OLD, "s2": NEW, "a1": OLD}
    inp = ElectionInput(members, assigned, count=1, dead_after=10.0)
    assert decide(inp).roles["s2"] is Role.AGENT  # without the rollout: the unready one goes
    d = decide_with_skew(inp, versions, ("s2",), NEW)
    assert d.roles["s2"] is Role.SERVER and d.roles["s1"] is Role.AGENT


def test_an_agent_waiting_for_an_older_server_is_a_standby_for_its_seat() -> None:
    """Found by the simulator (seed 1305, generation 5): a2, upgraded, came back from a
    partition as an agent while s3, a server still on the old release, crash-looped. a2 stopped
    its k3s (the version-skew rule), so no ready machine could take s3's seat and s3 was never
    replaced: one server short for good. A machine that stopped only for that rule could run
    as a server: it counts as a ready standby."""
    members = [_m("s1"), _m("s3", ready=False), _m("a2", ready=False, role=Role.NONE)]
    assigned = {"s1": Role.SERVER, "s3": Role.SERVER, "a2": Role.AGENT}
    versions = {"s1": NEW, "s3": OLD, "a2": NEW}
    inp = ElectionInput(
        members, assigned, count=2, dead_after=10.0, unready={"s3": 400.0}, unready_after=300.0
    )
    assert decide(inp).roles["s3"] is Role.SERVER  # no ready standby: s3 keeps the seat
    d = decide_with_skew(inp, versions, (), "")
    assert d.roles["s3"] is Role.AGENT and d.roles["a2"] is Role.SERVER
    # Not for a machine that is merely not ready: a2 on the old release is no standby.
    versions["a2"] = OLD
    assert decide_with_skew(inp, versions, (), "").roles["s3"] is Role.SERVER


def test_a_server_demoted_after_its_restart_leaves_the_grants_for_the_servers() -> None:
    """Found by the simulator (seed 169, generation 6): s1 crashed after its k3s restarted on
    the new release and came back demoted, an agent newer than the server s2, held stopped by
    the version-skew rule. Its grant stayed, so nothing else was granted: s1 waited for s2 and
    the rollout waited for s1 until s1's readiness wait ran out and halted it. The grant goes
    (s2 is upgraded next); s1 still counts as being upgraded, so it is not promoted on a
    release not yet proven."""
    members = [_m("s1", role=Role.AGENT), _m("s2"), _m("a1", role=Role.AGENT)]
    assigned = {"s1": Role.AGENT, "s2": Role.SERVER, "a1": Role.AGENT}
    versions = {"s1": NEW, "s2": OLD, "a1": OLD}
    cur = Rollout(NEW, RUNNING, grants=("s1",))
    progress = {"s1": Progress("s1", NEW, OLD, "starting")}
    d = plan(
        _inp(current=cur, progress=progress, members=members, assigned=assigned, versions=versions)
    )
    assert d.rollout is not None and d.rollout.grants == ("s2",)
    assert "s1 is an agent now" in d.sentence
    assert in_upgrade(d.rollout, progress) == ("s2", "s1")
    done = {"s1": _done("s1")}
    assert in_upgrade(d.rollout, done) == ("s2",)


def test_a_server_mid_upgrade_counts_as_its_old_release_for_the_skew_rule() -> None:
    """Found by the simulator (seed 264, generation 6): s1's heartbeat reported the new
    release once its binary was swapped, so a returning upgraded agent started beside it; s1's
    new k3s failed and was rolled back, and the agent had to stop again (a needless restart).
    Until its upgrade ends, a machine counts as the release it upgrades from."""
    versions = {"s1": NEW, "a1": NEW}
    for step in ("restarting", "starting", "rolling-back", "uncordoning"):
        progress = {"s1": Progress("s1", NEW, OLD, step)}
        assert settled_version("s1", versions, progress) == OLD, step
    for step in ("done", "failed"):
        progress = {"s1": Progress("s1", NEW, OLD, step)}
        assert settled_version("s1", versions, progress) == NEW, step
    assert settled_version("s1", versions, {}) == NEW
    assert settled_version("a1", versions, {"s1": Progress("s1", NEW, OLD, "starting")}) == NEW
    # Never newer than the heartbeat says (a rolled-back binary reports the old release).
    progress = {"s1": Progress("s1", NEW, OLD, "rolling-back")}
    assert settled_version("s1", {"s1": OLD}, progress) == OLD
