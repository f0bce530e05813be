"""The datastore contract (k3snoded/datastore/base.py), one suite run unchanged against SQLite,
MariaDB and PostgreSQL (the `target` fixture)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k3snoded.datastore import COORDINATOR_LEASE, Datastore, MemberRecord, prepare, schema
from k3snoded.datastore.schema import LATEST, MEMBERS, VERSION_TABLE
from k3snoded.errors import DatastoreError, DatastoreRejected, DatastoreUnavailable
from k3snoded.model import Role, RolePreference
from tests.contract.conftest import Target, fresh_name
from tests.contract.proxy import Proxy

pytestmark = pytest.mark.db


def record(name: str, **kw: object) -> MemberRecord:
    fields: dict[str, object] = {
        "name": name,
        "address": f"198.18.0.{len(name)}",
        "api_port": 6480,
        "preference": RolePreference.AUTO,
        "eligible": True,
        "role": Role.NONE,
        "ready": False,
    }
    fields.update(kw)
    return MemberRecord(**fields)  # type: ignore[arg-type]


async def ready(target: Target) -> Datastore:
    ds = target.open()
    await ds.preflight()
    await ds.ensure_schema()
    return ds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def no_sqlite(target: Target) -> None:
    if target.is_sqlite:
        pytest.skip("SQLite is a local file: no server, credentials or network")


# --- preflight ---------------------------------------------------------------------------------


async def test_preflight_ok(target: Target) -> None:
    ds = target.open()
    await ds.preflight()
    if not target.is_sqlite:
        addr = f"{target.base.host}:{target.base.port}"
        assert ds.description == f"{target.backend} {addr}/{target.database}"


async def test_preflight_closed_port_is_unavailable_quickly(target: Target) -> None:
    no_sqlite(target)
    port = free_port()
    ds = target.open(target.endpoint(host="127.0.0.1", port=port), retry_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DatastoreUnavailable) as info:
        await ds.preflight()
    assert time.monotonic() - started < 3.0
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_preflight_wrong_password_is_rejected_naming_auth(target: Target) -> None:
    no_sqlite(target)
    secret = "not-the-password-9f3b"
    ds = target.open(target.endpoint(password=secret))
    with pytest.raises(DatastoreRejected, match="authentication failed") as info:
        await ds.preflight()
    assert secret not in str(info.value)
    assert f"{target.base.host}:{target.base.port}" in str(info.value)


async def test_preflight_creates_a_missing_database(target: Target) -> None:
    name = fresh_name() if not target.is_sqlite else target.database
    if not target.is_sqlite:
        target.created.append(name)  # dropped at teardown
        assert not target.database_exists(name)
    ds = target.open(target.endpoint(database=name))
    await ds.preflight()
    await ds.ensure_schema()
    assert target.database_exists(name)
    assert await ds.members() == []


def self_signed_ca(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k3snoded test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


async def test_preflight_tls_configured_but_not_possible_is_rejected(
    target: Target, tmp_path: Path
) -> None:
    no_sqlite(target)
    # The shared servers run without TLS: a configured CA must not fall back to plain text.
    # (no sslmode in the URL: kine's rule makes it verify-full when TLS files are given)
    ds = target.open(target.endpoint(sslmode=None), ca_file=self_signed_ca(tmp_path))
    with pytest.raises(DatastoreRejected, match="TLS"):
        await ds.preflight()


async def test_preflight_missing_tls_file_is_rejected(target: Target, tmp_path: Path) -> None:
    no_sqlite(target)
    ds = target.open(target.endpoint(sslmode=None), ca_file=tmp_path / "absent.pem")
    with pytest.raises(DatastoreRejected, match=r"TLS|certificate"):
        await ds.preflight()


# --- schema ------------------------------------------------------------------------------------


async def test_ensure_schema_is_idempotent_and_versioned(target: Target) -> None:
    ds = await ready(target)
    await ds.ensure_schema()
    versions = target.query(f"SELECT version FROM {VERSION_TABLE}")
    assert [int(v) for (v,) in versions] == [LATEST] == [1]


async def test_ensure_schema_concurrently_from_several_nodes(target: Target) -> None:
    stores = [target.open() for _ in range(4)]
    for ds in stores:
        await ds.preflight()
    await asyncio.gather(*(ds.ensure_schema() for ds in stores))
    assert len(target.query(f"SELECT version FROM {VERSION_TABLE}")) == 1
    await stores[0].heartbeat(record("n1"))
    assert [r.member.name for r in await stores[3].members()] == ["n1"]


async def test_schema_upgrade_applies_only_the_new_step(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = await ready(target)  # at version 1
    await ds.heartbeat(record("n1"))
    v2 = "CREATE TABLE IF NOT EXISTS k3snoded_v2_probe (name VARCHAR(64) NOT NULL PRIMARY KEY)"
    monkeypatch.setattr(schema, "STEPS", (*schema.STEPS, (2, (v2,))))
    monkeypatch.setattr(schema, "LATEST", 2)
    other = target.open()
    await other.ensure_schema()
    await other.ensure_schema()
    versions = sorted(int(v) for (v,) in target.query(f"SELECT version FROM {VERSION_TABLE}"))
    assert versions == [1, 2]
    assert target.query("SELECT COUNT(*) FROM k3snoded_v2_probe") == [(0,)]
    assert [r.member.name for r in await other.members()] == ["n1"]  # v1 data untouched
    monkeypatch.undo()
    await ds.ensure_schema()  # an older node on a newer schema carries on


# --- heartbeats and members --------------------------------------------------------------------


async def test_heartbeat_and_members_on_the_database_clock(target: Target) -> None:
    a, b = await ready(target), await ready(target)
    await a.heartbeat(record("node-a", role=Role.SERVER, ready=True, k3s_version="v1.30.4+k3s1"))
    await b.heartbeat(record("node-b", preference=RolePreference.AGENT, eligible=False))
    rows_a, rows_b = await a.members(), await b.members()
    assert [r.member for r in rows_a] == [r.member for r in rows_b] or all(
        x.member.name == y.member.name for x, y in zip(rows_a, rows_b, strict=True)
    )
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
    assert all(r.member.heartbeat_age < 0.5 for r in rows_b)

    await asyncio.sleep(0.6)
    aged = {r.member.name: r.member.heartbeat_age for r in await a.members()}
    assert all(0.5 <= age < 2.0 for age in aged.values()), aged
    await b.heartbeat(record("node-b", preference=RolePreference.AGENT, eligible=False))
    fresh = {r.member.name: r.member.heartbeat_age for r in await a.members()}
    assert fresh["node-b"] < 0.3 <= fresh["node-a"]


async def test_ages_come_from_the_stored_database_time(target: Target) -> None:
    ds = await ready(target)
    await ds.heartbeat(record("old"))
    # Move the stored heartbeat 100 s into the past, as if written by the database long ago.
    target.query(f"UPDATE {MEMBERS} SET updated_at = updated_at - 100")
    (row,) = await ds.members()
    assert 100.0 <= row.member.heartbeat_age < 102.0


async def test_sync_is_heartbeat_plus_members(target: Target) -> None:
    a, b = await ready(target), await ready(target)
    await b.heartbeat(record("node-b"))
    before = a.statements
    rows = await a.sync(record("node-a", ready=True))
    per_cycle = a.statements - before
    assert [r.member.name for r in rows] == ["node-a", "node-b"]
    assert rows[0].member.ready and rows[0].member.heartbeat_age < 0.5
    assert per_cycle == (1 if target.backend == "postgres" else 2)
    assert [r.member.name for r in await b.members()] == ["node-a", "node-b"]


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
    assert await a.try_lease("bootstrap", "node-a", 1.0)
    assert await a.try_lease("bootstrap", "node-a", 1.0)  # renew
    assert not await b.try_lease("bootstrap", "node-b", 1.0)  # held, not expired
    lease = await b.lease("bootstrap")
    assert lease is not None and lease.holder == "node-a" and 0.5 < lease.remaining <= 1.0

    await asyncio.sleep(1.2)
    assert await b.lease("bootstrap") is None  # expired on the database clock
    assert await b.try_lease("bootstrap", "node-b", 5.0)  # taken over after expiry
    assert not await a.try_lease("bootstrap", "node-a", 5.0)

    await a.release_lease("bootstrap", "node-a")  # not the holder: nothing happens
    lease = await a.lease("bootstrap")
    assert lease is not None and lease.holder == "node-b"
    await b.release_lease("bootstrap", "node-b")
    assert await a.lease("bootstrap") is None
    assert await a.try_lease("bootstrap", "node-a", 5.0)


async def test_assign_roles_only_by_the_coordinator(target: Target) -> None:
    a, b = await ready(target), await ready(target)
    for name in ("node-a", "node-b", "node-c"):
        await a.heartbeat(record(name))
    roles = {"node-a": Role.SERVER, "node-b": Role.AGENT, "ghost": Role.SERVER}
    assert not await a.assign_roles(roles, "node-a")  # no lease at all
    assert all(r.assigned is None for r in await b.members())

    assert await a.try_lease(COORDINATOR_LEASE, "node-a", 1.0)
    assert not await b.assign_roles({"node-b": Role.SERVER}, "node-b")
    assert await a.assign_roles(roles, "node-a")
    seen = {r.member.name: r.assigned for r in await b.members()}
    assert seen == {"node-a": Role.SERVER, "node-b": Role.AGENT, "node-c": None}

    await asyncio.sleep(1.2)  # the coordinator lease expires
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


# --- outages (through a proxy we can cut; the shared servers keep running) ----------------------


async def test_connection_cut_then_transparent_recovery(target: Target) -> None:
    no_sqlite(target)
    proxy = await Proxy(target.base.host, target.base.port).start()
    try:
        ds = target.open(target.endpoint(host="127.0.0.1", port=proxy.port), retry_timeout=1.0)
        await ds.preflight()
        await ds.ensure_schema()
        await ds.heartbeat(record("n1"))

        await proxy.cut()
        started = time.monotonic()
        with pytest.raises(DatastoreUnavailable, match=f"127.0.0.1:{proxy.port}"):
            await ds.heartbeat(record("n1"))
        with pytest.raises(DatastoreUnavailable):  # still down: refused
            await ds.members()
        assert time.monotonic() - started < 6.0

        await proxy.restore()
        await ds.heartbeat(record("n1", ready=True))  # reconnects by itself
        (row,) = await ds.members()
        assert row.member.ready
    finally:
        await proxy.close()


async def test_hung_server_times_out_then_recovers(target: Target) -> None:
    no_sqlite(target)
    proxy = await Proxy(target.base.host, target.base.port).start()
    try:
        ds = target.open(target.endpoint(host="127.0.0.1", port=proxy.port), retry_timeout=1.0)
        await ds.preflight()
        await ds.ensure_schema()

        proxy.freeze()  # connections stay open, nothing is forwarded
        started = time.monotonic()
        with pytest.raises(DatastoreUnavailable):
            await ds.try_lease(COORDINATOR_LEASE, "n1", 10)
        elapsed = time.monotonic() - started
        assert elapsed < 5.0  # budget 2 x retry_timeout + 0.5 s: well below a 10 s lease

        await proxy.restore()
        assert await ds.try_lease(COORDINATOR_LEASE, "n1", 10)
    finally:
        await proxy.close()


async def test_prepare_waits_for_a_datastore_that_boots_later(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    no_sqlite(target)
    proxy = await Proxy(target.base.host, target.base.port).start()
    try:
        await proxy.cut()  # the datastore is "not booted yet": connections refused
        ds = target.open(target.endpoint(host="127.0.0.1", port=proxy.port), retry_timeout=1.0)
        caplog.set_level(logging.DEBUG, logger="k3snoded.datastore")
        task = asyncio.create_task(prepare(ds, first_delay=0.05, max_delay=0.1))
        await asyncio.sleep(0.6)
        assert not task.done()
        await proxy.restore()
        failures = await asyncio.wait_for(task, 10)
        assert failures >= 2
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # a repeated failure is logged once, then quietly
        assert f"127.0.0.1:{proxy.port}" in warnings[0].getMessage()
        await ds.heartbeat(record("n1"))
    finally:
        await proxy.close()


async def test_prepare_gives_up_at_the_deadline(target: Target) -> None:
    no_sqlite(target)
    ds = target.open(target.endpoint(host="127.0.0.1", port=free_port()), retry_timeout=1.0)
    with pytest.raises(DatastoreUnavailable):
        await prepare(ds, first_delay=0.05, deadline=time.monotonic() + 0.3)
