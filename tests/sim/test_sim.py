"""The simulator in the test suite: seeds that once broke an invariant (one per hole closed),
hand-written schedules for holes a random plan rarely hits, and determinism.

The sweep of thousands of seeds is ``make sim`` (run by ``make test``); see tests/sim/README.md.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from k3snoded.datastore import BOOTSTRAPPED_FLAG
from k3snoded.model import Role, RolePreference
from tests.sim.plan import Fault, Plan, make_plan
from tests.sim.runner import replay_command, report, run_seed
from tests.sim.world import World

REPO = Path(__file__).resolve().parents[2]

# Seeds the simulator found breaking an invariant before the fix named beside each, with the
# plan generation they were found in (tests/sim/plan.py: later fault kinds add generations).
REGRESSIONS_GEN1 = {
    1: "a server's --tls-san followed the lowest ready peer: k3s restarted when a peer got ready",
    2: "an agent without registration.address was stopped when its server died",
    41: "an agent's --server followed the lowest ready server: restarted on a failover",
    81: "a server replaced during a slow datastore took its seat back (it still ran a server)",
    6: "a forward step of the database clock made every member but the coordinator look dead",
    40: "a forward step of the database clock demoted two live servers at once",
    22: "the bootstrap holder, cut off, kept its unbootstrapped k3s while another bootstrapped",
    24: "a clock step expired the bootstrap lease: a second server started its first start",
    61: "a server whose k3s never became ready kept its seat while ready agents waited",
    21: "the only server crash-looped; agents cannot be ready without it, so nobody replaced it",
    435: "on stop the loop took the coordinator lease again after it was released",
    499: "on stop the loop restarted the VRRP speaker after it was stopped",
    670: "a transient error in the start-up token check read as 'token differs', 30 s asleep",
    31: "the fence stopped a first server whose k3s had bootstrapped (the flag write was slow)",
}


REGRESSIONS_GEN2 = {
    41: "the coordinator died between SELECT ... FOR UPDATE and COMMIT: no failover for hours",
    1672: "servers waiting out a first start were demoted in turn as 'not ready': never formed",
    2262: "two of three machines crash-looped; the bootstrap went round between those two",
    3329: "a restarted daemon stopped its adopted k3s, which had bootstrapped while unwatched",
    4187: "a server demoted for a k3s that never got ready was promoted straight back",
    76400: "a first server's daemon restarted during an outage adopted its unbootstrapped k3s "
    "and nothing fenced it while another server bootstrapped",
    80255: "a first server whose k3s came up while its lease renewal was slow (and lost to a "
    "clock step) was stopped: the lost-lease branch did not look at its readiness again",
    55276: "a first server demoted for a never-ready k3s kept the bootstrap lease: each next "
    "first server waited it out (2 TTL + TTL + stop_timeout) and the fleet formed too late",
    62904: "a pinned first server that crash-looped stepped out, and was promoted straight back "
    "each time its pause ended (also: the model killed never-ready agents, which k3s does not)",
    34352: "two never-ready machines took the seat in turn, each round slowed by a bootstrap "
    "lease left to expire (also: the model killed never-ready agents, which k3s does not)",
}
REGRESSIONS_GEN3 = {
    4487: "a first server whose k3s had come up, but whose /readyz failed on a lost answer of "
    "a slow datastore, lost the lease to another and was stopped as unbootstrapped",
}
# Planned operations (issue 15), found where the later kinds were these (plan.later_kinds).
OPS_1 = "die_mid_write,rollout"
OPS_3 = "die_mid_write,rollout,maintenance,pause"
REGRESSIONS_OPS = {
    (OPS_1, 102): "an agent granted its upgrade still reported the old release: a returning "
    "machine on the old release was promoted under it",
    (OPS_3, 586): "an upgraded server went into maintenance and an agent on the old release "
    "replaced it",
    (OPS_3, 1173): "a server granted its upgrade and demoted in the same cycle upgraded as an "
    "agent while a server ran the old release: it could not run, and the rollout halted",
    (OPS_3, 511): "an agent being upgraded was promoted; its new k3s was rolled back under a "
    "newer agent",
}
REGRESSIONS_GEN6 = {
    199: "a server granted its upgrade restarted k3s during a datastore outage: the new k3s "
    "could not start, the release was judged failed, and the rollout halted for good",
    169: "a server demoted mid-upgrade came back as an agent on the new release, held by the "
    "skew rule; its grant kept the rollout from upgrading the server it waited for, and its "
    "readiness wait ran out: judged failed, the rollout halted",
    1078: "an agent's upgrade was judged on readiness while no server was ready (an agent "
    "cannot be ready without one): judged failed, the rollout halted, and the only server, "
    "broken, was not replaced within the bound",
    264: "a returning upgraded agent started while a server was mid-upgrade (its heartbeat "
    "already reported the new release); that server was rolled back, and the agent had to "
    "stop again for the skew rule: a needless k3s restart",
    774: "an agent frozen (SIGSTOP) while its k3s stopped for the upgrade found the stop "
    "deadline passed when thawed (it counted the frozen time): judged failed, rollout halted",
    885: "a pause request reported failed (slow datastore) was written later by that machine's "
    "retry, after the operator had paused through another machine and resumed: paused for good",
    1178: "a pause request reported failed (a partition) was written later by that machine's "
    "retry, undoing the resume asked meanwhile: the rollout never finished",
}
REGRESSIONS = [
    *(pytest.param(6, s, id=f"gen6-seed-{s}") for s in sorted(REGRESSIONS_GEN6)),
    *(pytest.param(1, s, id=f"seed-{s}") for s in sorted(REGRESSIONS_GEN1)),
    *(pytest.param(2, s, id=f"gen2-seed-{s}") for s in sorted(REGRESSIONS_GEN2)),
    *(pytest.param(3, s, id=f"gen3-seed-{s}") for s in sorted(REGRESSIONS_GEN3)),
    *(pytest.param(g, s, id=f"ops{g.count(',')}-seed-{s}") for g, s in sorted(REGRESSIONS_OPS)),
]


@pytest.mark.parametrize(("generation", "seed"), REGRESSIONS)
def test_regression_seed(generation: int | str, seed: int) -> None:
    result, trace = run_seed(seed, generation=generation)
    assert result.violation is None, report(seed, result.violation, trace, generation)


def run_plan(plan: Plan, tmp_path: Path) -> World:
    world = World(plan, tmp_path)
    world.run()
    return world


def bootstrapped_by(world: World) -> str | None:
    """The machine whose daemon saw its k3s come up as the first server (k3s's own CA may
    have been saved by an earlier first server that never got ready)."""
    return world.server.flags.get(BOOTSTRAPPED_FLAG)


def calm(seed: int = 7, **changes: object) -> Plan:
    """A fleet plan without random faults, to which a test adds its own."""
    fields: dict[str, object] = {
        "machines": 3,
        "count": 2,
        "preferences": (RolePreference.AUTO,) * 3,
        "dialect": "postgres",
        "registration": "198.18.0.100",
        "boot_at": (0.0, 0.5, 1.0),
        "k3s_faults": ("none",) * 3,
        "slow_stops": (False,) * 3,
        "faults": (),
    }
    fields.update(changes)
    return Plan(seed=seed, **fields)  # type: ignore[arg-type]


def test_a_calm_fleet_forms_and_stays(tmp_path: Path) -> None:
    world = run_plan(calm(), tmp_path)
    assert world.violation is None, world.render()
    servers = [n for n, r in world.server.members.items() if r.assigned is not None]
    assert len(servers) == 3
    assert world.server.cluster_ca is not None


def test_only_the_coordinator_reads_every_member(tmp_path: Path) -> None:
    """Per-member cost independent of the fleet's size: a member that never coordinated reads
    its own row, the servers and the coordinator's, whatever the number of agents."""
    n, eligible = 9, 3
    prefs = (RolePreference.AUTO,) * eligible + (RolePreference.AGENT,) * (n - eligible)
    plan = calm(
        machines=n,
        preferences=prefs,
        boot_at=tuple(0.2 * i for i in range(n)),
        k3s_faults=("none",) * n,
        slow_stops=(False,) * n,
    )
    world = run_plan(plan, tmp_path)
    assert world.violation is None, world.render()
    assert sum(r.assigned is Role.AGENT for r in world.server.members.values()) == n - 2
    coordinators = {holder for _t, holder in world.server.lease_history}
    assert len(coordinators) == 1
    others = [(c, rows) for c, everyone, rows in world.server.reads if c not in coordinators]
    assert others and all(
        not everyone for c, everyone, _r in world.server.reads if c not in coordinators
    )
    assert max(rows for _c, rows in others) <= 2 + 2  # servers.count + itself + coordinator
    full = [rows for c, everyone, rows in world.server.reads if everyone]
    assert max(full) == n  # the coordinator decides from every row


def test_same_seed_same_trace_in_fresh_processes() -> None:
    """Determinism across processes and hash seeds (set iteration order differs)."""
    code = (
        "from tests.sim.runner import run_seed;"
        "r, _ = run_seed(11); print(r.digest, r.lines, r.violation)"
    )
    outs = set()
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        outs.add(out.stdout)
    assert len(outs) == 1, outs


def test_same_seed_same_trace_twice() -> None:
    first, _ = run_seed(5)
    second, _ = run_seed(5)
    assert (first.digest, first.lines) == (second.digest, second.lines)


def test_a_failing_seed_prints_its_trace_and_replay_command() -> None:
    text = report(3, "t=1.00 m1: something", "   1.000 m1   role server: because")
    assert "seed 3: t=1.00 m1: something" in text
    assert "role server: because" in text
    assert replay_command(3) in text and "--seed 3" in replay_command(3)


def test_faults_are_drawn_from_the_seed() -> None:
    assert make_plan(42) == make_plan(42)
    kinds = {f.kind for s in range(300) for f in make_plan(s).faults}
    assert kinds >= {
        "crash",
        "freeze",
        "daemon_kill",
        "daemon_restart",
        "db_down",
        "partition",
        "db_slow",
        "clock_step",
        "k3s_broken",
        "sighup",
        "die_mid_write",
        "systemd_restart",
    }
    assert isinstance(make_plan(1).faults[0], Fault)


def test_a_backward_clock_step_does_not_keep_a_dead_coordinator(tmp_path: Path) -> None:
    """The database clock steps back an hour, then the coordinator's machine dies: its lease
    (expiry on the database clock) and its heartbeat must not look fresh for that hour."""
    probe = run_plan(calm(faults=(Fault(20.0, "clock_step", None, arg=0.0),)), tmp_path / "a")
    coordinator = probe.server.leases["coordinator"][0]
    index = next(m.index for m in probe.machines if m.name == coordinator)
    plan = calm(
        faults=(
            Fault(20.0, "clock_step", None, arg=-3600.0),
            Fault(21.0, "crash", index, duration=math.inf),
        )
    )
    world = run_plan(plan, tmp_path / "b")
    assert world.violation is None, world.render()


def test_a_first_server_that_never_gets_ready_does_not_hold_the_bootstrap_forever(
    tmp_path: Path,
) -> None:
    """m1 boots first and takes the bootstrap lease, but its k3s never becomes ready: it must
    let go (after k3s.ready_timeout) so that another server bootstraps the cluster."""
    plan = calm(boot_at=(0.0, 5.0, 6.0), k3s_faults=("never_ready", "none", "none"))
    world = run_plan(plan, tmp_path)
    assert world.violation is None, world.render()
    assert bootstrapped_by(world) in ("m2", "m3"), world.render()
    first = next(t for t, who, text in world.lines if "bootstrapping the cluster" in text)
    assert first < 10.0  # m1 went first
    gave_up = ("k3s failed to start", "demoted m1 because its k3s has not been ready")
    assert any(g in text for _, _, text in world.lines for g in gave_up), world.render()


def _server_and_pid(world: World, name: str) -> tuple[object, object]:
    row = world.server.members.get(name)
    proc = next(m for m in world.machines if m.name == name).host.proc
    return (row.assigned if row else None, proc.pid if proc else None)


def test_a_server_restarted_during_an_outage_keeps_its_seat(tmp_path: Path) -> None:
    """A server's daemon restarts while the datastore is down: its k3s is adopted, and it
    must heartbeat again soon enough after the datastore returns to keep its seat."""
    probe = run_plan(calm(), tmp_path / "a")
    server = next(n for n, r in sorted(probe.server.members.items()) if r.assigned is Role.SERVER)
    index = next(m.index for m in probe.machines if m.name == server)
    plan = calm(
        faults=(
            Fault(20.0, "db_down", None, duration=70.0, how="refuse"),
            Fault(22.0, "daemon_kill", index),
        )
    )
    world = run_plan(plan, tmp_path / "b")
    assert world.violation is None, world.render()
    # (its k3s exits 255 on its own 15 s into the outage, as a real k3s server does)
    assigned = [w.roles.get(server) for w in world.server.role_writes if w.at - world.start > 20]
    assert Role.AGENT not in assigned, world.render()
    assert _server_and_pid(world, server)[0] is Role.SERVER


@pytest.mark.parametrize("lag", [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
def test_two_first_machines_with_different_tokens_are_not_both_members(
    tmp_path: Path, lag: float
) -> None:
    """m1 and m2 start at (nearly) the same instant on an empty datastore with different
    tokens: the fleet's token verifier is whichever was stored first, and the other refuses."""
    plan = calm(boot_at=(0.0, lag, 30.0))
    world = World(plan, tmp_path)
    world.keys["m2"] = b"another-cluster-key"
    world.run()
    members = set(world.server.members)
    assert not {"m1", "m2"} <= members, world.render()
    assert sum("refusing to join" in text for _, _, text in world.lines) == 1, world.render()


def _lines(world: World, who: str, *texts: str) -> list[float]:
    return [t for t, w, text in world.lines if w == who and any(x in text for x in texts)]


def test_a_demoted_first_server_releases_the_bootstrap_lease(tmp_path: Path) -> None:
    """m1 bootstraps but its k3s never gets ready; the coordinator gives the seat to m2. m1
    must release the bootstrap lease once its k3s is gone, so that m2 need not wait the lease
    out (2 TTL) and then the time a holder that did not release it needs to stop its k3s."""
    plan = calm(count=1, boot_at=(0.0, 5.0, 6.0), k3s_faults=("never_ready", "none", "none"))
    world = run_plan(plan, tmp_path)
    assert world.violation is None, world.render()
    assert bootstrapped_by(world) in ("m2", "m3"), world.render()
    assert not any("did not release it" in text for _, _, text in world.lines), world.render()
    stopped = _lines(world, "m1", "k3s stopped")[0]
    first = min([*_lines(world, "m2", "bootstrapping the cluster"), math.inf])
    assert first - stopped < 5.0, world.render()


def test_a_machine_whose_k3s_failed_as_first_server_is_not_promoted_straight_back(
    tmp_path: Path,
) -> None:
    """m1 (pinned server) crash-loops as the first server and steps out; m2's k3s never gets
    ready either. The seat must then go to m3, which has not failed, not back to m1 when its
    pause ends (it would fail again, and each round costs a ready_timeout)."""
    plan = calm(
        count=1,
        preferences=(RolePreference.SERVER, RolePreference.AUTO, RolePreference.AUTO),
        boot_at=(0.0, 5.0, 6.0),
        k3s_faults=("crash_loop", "never_ready", "none"),
    )
    world = run_plan(plan, tmp_path)
    assert world.violation is None, world.render()
    assert bootstrapped_by(world) == "m3", world.render()
    promoted = [text for _, _, text in world.lines if "promoted m1" in text]
    assert not promoted, world.render()


def test_agents_learn_the_ca_hash_in_the_cycle_the_cluster_is_bootstrapped(
    tmp_path: Path,
) -> None:
    """A cold start: the agents wait for the fleet's CA hash, which the first server publishes
    once its k3s is ready. It must publish it in the cycle that records the bootstrap (woken by
    its k3s's readiness), not one renew interval later (the first server is at rest by then)."""
    n, eligible = 6, 3
    prefs = (RolePreference.AUTO,) * eligible + (RolePreference.AGENT,) * (n - eligible)
    plan = calm(
        machines=n,
        preferences=prefs,
        boot_at=(0.0,) * n,
        k3s_faults=("none",) * n,
        slow_stops=(False,) * n,
    )
    world = run_plan(plan, tmp_path)
    assert world.violation is None, world.render()
    first = bootstrapped_by(world)
    assert first is not None, world.render()
    booted = _lines(world, first, "bootstrapped the cluster")[0]
    agents = [f"m{i + 1}" for i in range(eligible, n)]
    started = [_lines(world, a, "k3s agent started")[0] for a in agents]
    # One fast cycle (0.5 s) of the agents after the flag is written, nothing more.
    assert max(started) - booted <= 0.6, world.render()


def test_the_datastore_is_prepared_while_k3s_reports_its_version(tmp_path: Path) -> None:
    """At start the daemon asks the k3s binary its version (an exec: on a loaded machine, or
    a slow board, a good part of a second) and prepares the datastore (connect, schema, the
    fleet's token verifier): neither needs the other, so they overlap, and the first
    heartbeat waits for the slower one only."""
    world = World(calm(), tmp_path)
    for m in world.machines:
        m.host.version_takes = 1.0
    world.run()
    assert world.violation is None, world.render()
    for m in world.machines:
        ready = _lines(world, m.name, "datastore ready")[0]
        version = _lines(world, m.name, "k3s binary")[0]
        assert ready < version, world.render()
