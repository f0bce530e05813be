"""The datastore contract (k3snoded/datastore/base.py), one suite run unchanged against SQLite,
MariaDB and PostgreSQL (the `target` fixture): schema, heartbeats, leases, flags."""

from __future__ import annotations

import asyncio

import pytest

from k3snoded.datastore import COORDINATOR_LEASE, schema
from k3snoded.datastore.schema import LATEST, VERSION_TABLE
from k3snoded.errors import DatastoreError
from k3snoded.model import Role, RolePreference
from tests.contract.conftest import Target, no_memory, ready, record

pytestmark = pytest.mark.db


# --- schema ------------------------------------------------------------------------------------


async def test_ensure_schema_is_idempotent_and_versioned(target: Target) -> None:
    no_memory(target)
    ds = await ready(target)
    await ds.ensure_schema()
    versions = target.query(f"SELECT version FROM {VERSION_TABLE}")
    assert sorted(int(v) for (v,) in versions) == list(range(1, LATEST + 1)) == [1, 2]


async def test_ensure_schema_concurrently_from_several_nodes(target: Target) -> None:
    no_memory(target)
    stores = [target.open() for _ in range(4)]
    for ds in stores:
        await ds.preflight()
    await asyncio.gather(*(ds.ensure_schema() for ds in stores))
    assert len(target.query(f"SELECT version FROM {VERSION_TABLE}")) == LATEST
    await stores[0].heartbeat(record("n1"))
    assert [r.member.name for r in await stores[3].members()] == ["n1"]


async def test_an_up_to_date_schema_needs_no_lock(target: Target) -> None:
    """A whole fleet starting at once (or back after an outage) must not queue behind the
    schema lock: 1,000 members did, and their lock waits timed out for half a minute."""
    no_memory(target)
    await ready(target)
    holder = target._connect(target.database)  # another session holds the schema lock
    cur = holder.cursor()
    try:
        if target.backend == "postgres":
            cur.execute("SELECT pg_advisory_lock(%s)", (0x6B33736E,))
        elif target.backend == "mysql":
            cur.execute("SELECT GET_LOCK('k3snoded_schema', 5)")
        else:
            cur.execute("BEGIN IMMEDIATE")
        cur.fetchall()
        other = target.open(retry_timeout=1.0)
        await other.preflight()
        await asyncio.wait_for(other.ensure_schema(), 2.5)  # the lock wait alone fails at 1 s
    finally:
        cur.close()
        holder.close()


async def test_schema_upgrade_applies_only_the_new_step(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_memory(target)
    monkeypatch.setattr(schema, "STEPS", schema.STEPS[:1])  # a database at version 1
    monkeypatch.setattr(schema, "LATEST", 1)
    ds = await ready(target)
    await ds.heartbeat(record("n1"))
    monkeypatch.undo()
    probe = "CREATE TABLE IF NOT EXISTS k3snoded_next_probe (name VARCHAR(64) NOT NULL PRIMARY KEY)"
    monkeypatch.setattr(schema, "STEPS", (*schema.STEPS, (LATEST + 1, (probe,))))
    monkeypatch.setattr(schema, "LATEST", LATEST + 1)
    other = target.open()
    await other.ensure_schema()
    await other.ensure_schema()
    versions = sorted(int(v) for (v,) in target.query(f"SELECT version FROM {VERSION_TABLE}"))
    assert versions == list(range(1, LATEST + 2))
    assert target.query("SELECT COUNT(*) FROM k3snoded_next_probe") == [(0,)]
    assert [r.member.name for r in await other.members()] == ["n1"]  # v1 data untouched
    monkeypatch.undo()
    await ds.ensure_schema()  # an older node on a newer schema carries on


# --- heartbeats and members --------------------------------------------------------------------


async def test_heartbeat_and_members_on_the_database_clock(target: Target) -> None:
    a, b = await ready(target), await ready(target)
    await a.heartbeat(record("node-a", role=Role.SERVER, ready=True, k3s_version="v1.30.4+k3s1"))
    await b.heartbeat(record("node-b", preference=RolePreference.AGENT, eligible=False))
    rows_a, rows_b = await a.members(), await b.members()
    assert [r.member.name for r in rows_a] == [r.member.name for r in rows_b]
    first, second = rows_b
    assert first.member.name == "node-a"
    assert (first.member.role, first.member.ready, first.k3s_version) == (
        Role.SERVER,
        True,
        "v1.30.4+k3s1",
    )
    assert (first.member.address, first.member.api_port, first.assigned) == (
        "198.18.0.6",
        6480,
        None,
    )
    assert second.member.preference is RolePreference.AGENT and not second.member.eligible
    assert all(0.0 <= r.member.heartbeat_age < 1.0 for r in rows_b)

    await asyncio.sleep(0.6)
    aged = {r.member.name: r.member.heartbeat_age for r in await a.members()}
    assert all(0.6 <= age < 5.0 for age in aged.values()), aged  # grows on the database clock
    await b.heartbeat(record("node-b", preference=RolePreference.AGENT, eligible=False))
    fresh = {r.member.name: r.member.heartbeat_age for r in await a.members()}
    assert fresh["node-b"] < aged["node-b"] - 0.5  # a heartbeat resets the age
    assert fresh["node-a"] >= aged["node-a"]


async def test_ages_come_from_the_stored_database_time(target: Target) -> None:
    ds = await ready(target)
    await ds.heartbeat(record("old"))
    # Move the stored heartbeat 100 s into the past, as if written by the database long ago.
    target.shift_heartbeats(-100)
    (row,) = await ds.members()
    assert 100.0 <= row.member.heartbeat_age < 102.0


async def test_the_stamp_changes_with_every_heartbeat_and_only_then(target: Target) -> None:
    a, b = await ready(target), await ready(target)
    await a.heartbeat(record("node-a"))
    (first,) = await b.members()
    await asyncio.sleep(0.05)
    (again,) = await b.members()
    assert again.stamp == first.stamp  # read twice, nobody wrote: the same stamp
    await a.heartbeat(record("node-a"))
    (after,) = await b.members()
    assert after.stamp != first.stamp
    rows = await b.sync(record("node-b"))
    assert [r.stamp for r in rows if r.member.name == "node-a"] == [after.stamp]


async def test_sync_is_heartbeat_plus_members(target: Target) -> None:
    a, b = await ready(target), await ready(target)
    await b.heartbeat(record("node-b"))
    before = a.statements
    rows = await a.sync(record("node-a", ready=True))
    per_cycle = a.statements - before
    assert [r.member.name for r in rows] == ["node-a", "node-b"]
    assert rows[0].member.ready and rows[0].member.heartbeat_age < 0.5
    one_statement = target.backend == "postgres" or (
        target.memory is not None and target.memory.dialect == "postgres"
    )
    assert per_cycle == (1 if one_statement else 2)
    assert [r.member.name for r in await b.members()] == ["node-a", "node-b"]


async def test_a_member_reads_itself_the_servers_and_the_coordinator(target: Target) -> None:
    ds, me = await ready(target), await ready(target)
    for name in ("a1", "a2", "c", "me", "s1", "s2"):
        await ds.heartbeat(record(name))
    # Before any lease or assignment: only its own row.
    assert [r.member.name for r in await me.members_seen_by("me")] == ["me"]
    assert await ds.try_lease(COORDINATOR_LEASE, "c", 30)
    agents = {n: Role.AGENT for n in ("a1", "a2", "c", "me")}
    assert await ds.assign_roles({**agents, "s1": Role.SERVER, "s2": Role.SERVER}, "c")
    rows = await me.members_seen_by("me")
    assert [r.member.name for r in rows] == ["c", "me", "s1", "s2"]
    full = {r.member.name: r for r in await me.members()}
    for r in rows:  # the same rows as a full read gives: stamps, roles, assignments
        assert (r.stamp, r.assigned, r.member.address) == (
            full[r.member.name].stamp,
            full[r.member.name].assigned,
            full[r.member.name].member.address,
        )
    before = me.statements
    rows = await me.sync(record("me", ready=True), everyone=False)
    one_statement = target.backend == "postgres" or (
        target.memory is not None and target.memory.dialect == "postgres"
    )
    assert me.statements - before == (1 if one_statement else 2)
    assert [r.member.name for r in rows] == ["c", "me", "s1", "s2"]
    mine = next(r for r in rows if r.member.name == "me")
    assert mine.member.ready and mine.assigned is Role.AGENT and mine.member.heartbeat_age < 0.5
    assert mine.stamp != full["me"].stamp  # the heartbeat it just wrote
    # A server reading, a coordinator that is a server: each row once.
    assert await ds.assign_roles({**agents, "me": Role.SERVER, "c": Role.SERVER}, "c")
    assert [r.member.name for r in await me.members_seen_by("me")] == ["c", "me"]
    rows = await me.sync(record("me"), everyone=False)
    assert [r.member.name for r in rows] == ["c", "me"]
    # An expired lease still names the coordinator last known.
    target.shift_lease(COORDINATOR_LEASE, -60)
    assert [r.member.name for r in await me.members_seen_by("a1")] == ["a1", "c", "me"]


async def test_heartbeat_keeps_the_assigned_role_and_remove_member(target: Target) -> None:
    ds = await ready(target)
    await ds.heartbeat(record("n1"))
    assert await ds.try_lease(COORDINATOR_LEASE, "n1", 5)
    assert await ds.assign_roles({"n1": Role.SERVER}, "n1")
    await ds.heartbeat(record("n1", role=Role.SERVER))
    (row,) = await ds.members()
    assert row.assigned is Role.SERVER
    await ds.remove_member("n1")
    await ds.remove_member("n1")
    assert await ds.members() == []


# --- leases ------------------------------------------------------------------------------------


async def test_only_one_of_many_contenders_wins(target: Target) -> None:
    stores = [await ready(target) for _ in range(5)]
    for round_ in range(3):
        name = f"race-{round_}"
        won = await asyncio.gather(
            *(ds.try_lease(name, f"node-{i}", 10) for i, ds in enumerate(stores))
        )
        assert sum(won) == 1, won
        lease = await stores[0].lease(name)
        assert lease is not None and lease.holder == f"node-{won.index(True)}"


async def test_lease_renew_expiry_and_release(target: Target) -> None:
    a, b = await ready(target), await ready(target)
    assert await a.lease("bootstrap") is None
    assert await a.try_lease("bootstrap", "node-a", 30.0)
    assert not await b.try_lease("bootstrap", "node-b", 30.0)  # held, not expired
    lease = await b.lease("bootstrap")
    assert lease is not None and lease.holder == "node-a" and 25.0 < lease.remaining <= 30.0
    assert await a.try_lease("bootstrap", "node-a", 0.5)  # the holder renews (here: shorter)
    lease = await b.lease("bootstrap")
    assert lease is None or (lease.holder == "node-a" and lease.remaining <= 0.5)

    await asyncio.sleep(0.7)
    assert await b.lease("bootstrap") is None  # expired on the database clock
    assert await b.try_lease("bootstrap", "node-b", 5.0)  # taken over after expiry
    assert not await a.try_lease("bootstrap", "node-a", 5.0)

    await a.release_lease("bootstrap", "node-a")  # not the holder: nothing happens
    lease = await a.lease("bootstrap")
    assert lease is not None and lease.holder == "node-b"
    await b.release_lease("bootstrap", "node-b")
    assert await a.lease("bootstrap") is None
    assert await a.try_lease("bootstrap", "node-a", 5.0)


async def test_last_holder_outlives_expiry_not_release(target: Target) -> None:
    a, b = await ready(target), await ready(target)
    assert await b.last_holder("bootstrap") is None
    assert await a.try_lease("bootstrap", "node-a", 0.3)
    await asyncio.sleep(0.5)
    assert await b.lease("bootstrap") is None  # expired
    assert await b.last_holder("bootstrap") == "node-a"  # but its row says who had it
    assert await b.try_lease("bootstrap", "node-b", 5.0)
    assert await a.last_holder("bootstrap") == "node-b"
    await b.release_lease("bootstrap", "node-b")
    assert await a.last_holder("bootstrap") is None


async def test_a_lease_beyond_a_full_ttl_is_void(target: Target) -> None:
    """A lease that expires later than a fresh one would is the mark of a database clock that
    stepped back: it must not keep a dead holder's lease for the length of the step."""
    a, b = await ready(target), await ready(target)
    assert await a.try_lease(COORDINATOR_LEASE, "node-a", 10.0)
    target.shift_lease(COORDINATOR_LEASE, 3600.0)  # the database clock stepped back an hour
    assert await b.try_lease(COORDINATOR_LEASE, "node-b", 10.0)
    assert not await a.assign_roles({}, "node-a")
    lease = await a.lease(COORDINATOR_LEASE)
    assert lease is not None and lease.holder == "node-b" and lease.remaining <= 10.0
    assert not await a.try_lease(COORDINATOR_LEASE, "node-a", 10.0)  # a fresh lease holds
    assert await b.try_lease(COORDINATOR_LEASE, "node-b", 10.0)


async def test_assign_roles_only_by_the_coordinator(target: Target) -> None:
    a, b = await ready(target), await ready(target)
    for name in ("node-a", "node-b", "node-c"):
        await a.heartbeat(record(name))
    roles = {"node-a": Role.SERVER, "node-b": Role.AGENT, "ghost": Role.SERVER}
    assert not await a.assign_roles(roles, "node-a")  # no lease at all
    assert all(r.assigned is None for r in await b.members())

    assert await a.try_lease(COORDINATOR_LEASE, "node-a", 30.0)
    assert not await b.assign_roles({"node-b": Role.SERVER}, "node-b")
    assert await a.assign_roles(roles, "node-a")
    seen = {r.member.name: r.assigned for r in await b.members()}
    assert seen == {"node-a": Role.SERVER, "node-b": Role.AGENT, "node-c": None}

    assert await a.try_lease(COORDINATOR_LEASE, "node-a", 0.3)
    await asyncio.sleep(0.5)  # the coordinator lease expires
    assert not await a.assign_roles({"node-c": Role.SERVER}, "node-a")
    assert await b.try_lease(COORDINATOR_LEASE, "node-b", 5.0)
    assert await b.assign_roles({"node-c": Role.SERVER}, "node-b")
    seen = {r.member.name: r.assigned for r in await a.members()}
    assert seen == {"node-a": None, "node-b": None, "node-c": Role.SERVER}


# --- flags, counters, lifecycle -----------------------------------------------------------------


async def test_flags(target: Target) -> None:
    a, b = await ready(target), await ready(target)
    assert await a.flags() == {}
    await a.set_flag("bootstrapped", "node-a")
    await b.set_flag("other", "x")
    await b.set_flag("other", "y")
    assert await a.flags() == {"bootstrapped": "node-a", "other": "y"}


async def test_claim_flag_is_insert_if_absent(target: Target) -> None:
    stores = [await ready(target) for _ in range(4)]
    won = await asyncio.gather(*(ds.claim_flag("verifier", f"v{i}") for i, ds in enumerate(stores)))
    assert len(set(won)) == 1 and won[0] in {"v0", "v1", "v2", "v3"}
    assert await stores[0].claim_flag("verifier", "late") == won[0]
    assert (await stores[1].flags())["verifier"] == won[0]


async def test_claiming_a_set_flag_takes_no_row_lock(target: Target) -> None:
    """Every member claims the fleet's verifier at start: with the flag set, that must not
    queue behind a lock on its row (a fleet of 1,000 on MariaDB did, and timed out)."""
    no_memory(target)
    ds = await ready(target)
    assert await ds.claim_flag("verifier", "first") == "first"
    holder = target._connect(target.database)  # another session locks the flag's row
    cur = holder.cursor()
    try:
        if target.is_sqlite:
            cur.execute("BEGIN IMMEDIATE")
        else:
            cur.execute("BEGIN")
            cur.execute("SELECT value FROM k3snoded_flags WHERE name = 'verifier' FOR UPDATE")
            cur.fetchall()
        other = target.open(retry_timeout=1.0)
        await other.preflight()
        before = other.statements
        assert await asyncio.wait_for(other.claim_flag("verifier", "late"), 2.5) == "first"
        assert other.statements - before == 1
    finally:
        holder.rollback()
        cur.close()
        holder.close()


async def test_statement_counter(target: Target) -> None:
    ds = await ready(target)
    start = ds.statements
    await ds.heartbeat(record("n1"))
    await ds.members()
    await ds.try_lease(COORDINATOR_LEASE, "n1", 5)
    await ds.lease(COORDINATOR_LEASE)
    await ds.flags()
    assert ds.statements - start == 5


async def test_close_is_idempotent_and_final(target: Target) -> None:
    ds = await ready(target)
    await ds.close()
    await ds.close()
    with pytest.raises(DatastoreError, match="closed"):
        await ds.members()
