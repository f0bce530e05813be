"""Table-driven tests of the pure role decision."""

from __future__ import annotations

import pytest

from k3snoded.election import ElectionInput, decide
from k3snoded.model import Member, Role, RolePreference

S, A = Role.SERVER, Role.AGENT


def m(
    name: str,
    *,
    age: float = 0.5,
    eligible: bool = True,
    pref: RolePreference = RolePreference.AUTO,
    role: Role = Role.NONE,
    ready: bool = False,
) -> Member:
    return Member(
        name=name,
        address="198.18.0.1",
        preference=pref,
        eligible=eligible,
        role=role,
        ready=ready,
        heartbeat_age=age,
    )


CASES = [
    pytest.param(
        [m("c"), m("a"), m("b")],
        {},
        2,
        {"a": S, "b": S, "c": A},
        "elected servers a, b",
        id="fresh",
    ),
    pytest.param(
        [m("a"), m("b"), m("c", pref=RolePreference.SERVER)],
        {},
        2,
        {"a": S, "c": S, "b": A},
        "elected servers c, a",
        id="pin-wins-on-fresh-fleet",
    ),
    pytest.param(
        [m("a"), m("b"), m("c", role=S)],
        {"a": S, "b": A, "c": S},
        2,
        {"a": S, "c": S, "b": A},
        "kept servers",
        id="no-swap-for-name-order",
    ),
    pytest.param(
        [m("a", age=30), m("b"), m("c")],
        {"a": S, "b": S, "c": A},
        2,
        {"a": A, "b": S, "c": S},
        "promoted c to server; demoted a because its heartbeat stopped",
        id="dead-server-replaced",
    ),
    pytest.param(
        [m("a", age=9.9), m("b"), m("c")],
        {"a": S, "b": S, "c": A},
        2,
        {"a": S, "b": S, "c": A},
        "kept servers",
        id="slow-beat-inside-window-changes-nothing",
    ),
    pytest.param(
        [m("a"), m("b", eligible=False), m("c", eligible=False)],
        {},
        2,
        {"a": S, "b": A, "c": A},
        "only 1 of 2 servers possible",
        id="no-credentials-never-server",
    ),
    pytest.param(
        [m("a"), m("b"), m("c")],
        {"a": S, "b": S, "c": S},
        2,
        {"a": S, "b": S, "c": A},
        "demoted c because servers.count is lower",
        id="count-lowered",
    ),
    pytest.param(
        # "a" was replaced while frozen/partitioned and comes back still running its server:
        # its assignment (agent) counts, not what it runs, so it does not take its seat back.
        [m("a", role=S, ready=True), m("b", role=S, ready=True), m("c", role=S, ready=True)],
        {"a": A, "b": S, "c": S},
        2,
        {"a": A, "b": S, "c": S},
        "kept servers b, c",
        id="returning-server-does-not-take-its-seat-back",
    ),
    pytest.param(
        [m("a", role=S, ready=True), m("b")],
        {},
        1,
        {"a": S, "b": A},
        "elected servers a",
        id="running-role-counts-without-an-assignment",
    ),
    pytest.param(
        [m("a"), m("b", age=60)],
        {"a": S, "b": A},
        2,
        {"a": S, "b": A},
        "only 1 of 2",
        id="dead-agent-keeps-assignment",
    ),
]


@pytest.mark.parametrize(("members", "assigned", "count", "want", "reason"), CASES)
def test_decide(
    members: list[Member],
    assigned: dict[str, Role],
    count: int,
    want: dict[str, Role],
    reason: str,
) -> None:
    d = decide(ElectionInput(members=members, assigned=assigned, count=count, dead_after=10.0))
    assert d.roles == want
    assert reason in d.reason


def test_a_server_whose_k3s_never_gets_ready_gives_its_seat_to_a_ready_machine() -> None:
    members = [m("a", role=S), m("b", role=S, ready=True), m("c", role=A, ready=True)]
    assigned = {"a": S, "b": S, "c": A}
    inp = ElectionInput(members, assigned, 2, 10.0, unready={"a": 301.0}, unready_after=300.0)
    d = decide(inp)
    assert d.roles == {"a": A, "b": S, "c": S}
    assert "demoted a because its k3s has not been ready for 301 s" in d.reason
    # Not yet past k3s.ready_timeout, or no ready machine to take the seat: kept.
    early = ElectionInput(members, assigned, 2, 10.0, unready={"a": 299.0}, unready_after=300.0)
    assert decide(early).roles == assigned
    alone = [m("a", role=S), m("b", role=S, ready=True), m("c", role=A)]
    lone = ElectionInput(alone, assigned, 2, 10.0, unready={"a": 999.0}, unready_after=300.0)
    assert decide(lone).roles == assigned
    # No server ready at all, so no agent can be ready either: the seat goes round.
    stuck = [m("a", role=S), m("c", role=A)]
    inp = ElectionInput(stuck, {"a": S, "c": A}, 1, 10.0, unready={"a": 61.0}, unready_after=60)
    assert decide(inp).roles == {"a": A, "c": S}


def test_a_server_demoted_for_never_getting_ready_is_ranked_last_for_a_while() -> None:
    members = [m("a", role=A), m("b", role=S, ready=True), m("c"), m("d")]
    inp = ElectionInput(members, {"b": S, "a": A, "c": A, "d": A}, 2, 10.0, avoid=frozenset("a"))
    assert decide(inp).roles == {"a": A, "b": S, "c": S, "d": A}
    first = ElectionInput(
        [m("a", role=S), m("b", role=S, ready=True), m("c", ready=True)],
        {"a": S, "b": S, "c": A},
        2,
        10.0,
        unready={"a": 61.0},
        unready_after=60.0,
    )
    assert decide(first).failed == frozenset({"a"})


def test_a_server_that_stepped_out_unready_counts_as_failed() -> None:
    """A first server whose k3s failed to come up pauses its eligibility: it is demoted, and
    reported failed, so that the coordinator ranks it last when the pause ends."""
    members = [m("a", eligible=False), m("b", role=A), m("c", role=A)]
    d = decide(ElectionInput(members, {"a": S, "b": A, "c": A}, 1, 10.0))
    assert d.roles == {"a": A, "b": S, "c": A}
    assert d.failed == frozenset({"a"})
    # A ready server that stops being eligible (leaving, node.role agent) has not failed.
    leaving = [m("a", eligible=False, role=S, ready=True), m("b", role=A), m("c", role=A)]
    assert decide(ElectionInput(leaving, {"a": S, "b": A, "c": A}, 1, 10.0)).failed == frozenset()


def test_decide_is_stable_when_fed_its_own_output() -> None:
    members = [m(n) for n in "edcba"]
    first = decide(ElectionInput(members, {}, 3, 10.0))
    second = decide(ElectionInput(members, first.roles, 3, 10.0))
    assert second.roles == first.roles
    assert second.reason.startswith("kept servers")
