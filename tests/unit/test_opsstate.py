"""Planned operations' documents in the flags table (k3snoded/opsstate.py)."""

from __future__ import annotations

from k3snoded.opsstate import (
    FLAG_WIDTH,
    MAINT_PREFIX,
    PAUSE,
    ROLLOUT,
    UPGRADE_PREFIX,
    Maintenance,
    Pause,
    Progress,
    Rollout,
    dump,
    load,
    node_flag,
    parse,
)


def test_documents_round_trip() -> None:
    for doc in (
        Pause(True, "root on m1", 12.5),
        Maintenance("m2", True, "alice", 3.0),
        Rollout("v1.31.5+k3s1", grants=("m1", "m2"), note="upgrading m1"),
        Progress("m1", "v1.31.5+k3s1", "v1.31.4+k3s1", "draining", 4.0),
    ):
        assert load(type(doc), dump(doc)) == doc


def test_what_does_not_parse_is_ignored() -> None:
    assert load(Pause, "not json") is None
    assert load(Pause, "[1]") is None
    assert load(Pause, '{"paused": "yes"}') is None  # wrong type voids the document
    assert load(Pause, "{}") is None  # a required field is missing
    assert load(Rollout, '{"target": "v1", "grants": [1]}') is None
    newer = load(Pause, '{"paused": true, "by": "x", "at": 1, "reason": "from the future"}')
    assert newer == Pause(True, "x", 1.0)  # unknown keys are a newer writer's: ignored


def test_parse_collects_per_node_documents_under_their_own_names() -> None:
    m2 = Maintenance("m2", True)
    p1 = Progress("m1", "v1.31.5+k3s1", step="done")
    flags = {
        PAUSE: dump(Pause(False)),
        ROLLOUT: "garbage",
        node_flag(MAINT_PREFIX, "m2"): dump(m2),
        node_flag(MAINT_PREFIX, "m3"): dump(Maintenance("m9", True)),  # under another's name
        node_flag(UPGRADE_PREFIX, "m1"): dump(p1),
        "bootstrapped": "m1",
    }
    view = parse(flags)
    assert not view.paused
    assert view.rollout is None
    assert view.maintenance == {"m2": m2}
    assert view.under_maintenance == {"m2"}
    assert view.progress == {"m1": p1}


def test_long_node_names_fit_the_flag_column() -> None:
    name = "n" * 253
    flag = node_flag(UPGRADE_PREFIX, name)
    assert len(flag) == FLAG_WIDTH and flag.startswith(UPGRADE_PREFIX)
    assert node_flag(UPGRADE_PREFIX, "m1") == "ops/upgrade/m1"
    p = Progress(name, "v1.31.5+k3s1", step="done")
    assert parse({flag: dump(p)}).progress == {name: p}
