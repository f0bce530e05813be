"""The datastore contract when things go wrong: preflight diagnoses, TLS, outages through a
cuttable proxy (the shared servers keep running), and `prepare` with backoff. Same `target`
fixture as the main suite."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k3snoded.datastore import COORDINATOR_LEASE, prepare
from k3snoded.errors import DatastoreRejected, DatastoreUnavailable
from k3snoded.model import Role
from tests.contract.conftest import Target, free_port, fresh_name, no_memory, no_sqlite, record
from tests.contract.proxy import Proxy

pytestmark = pytest.mark.db


# --- preflight ---------------------------------------------------------------------------------


async def test_preflight_ok(target: Target) -> None:
    no_memory(target)
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
    no_memory(target)
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


async def test_mysql_tls_true_in_the_endpoint_is_never_plain_text(target: Target) -> None:
    # go-sql-driver's tls=true (what k3s does with the same endpoint): TLS verified against the
    # system's roots, and an error when the server offers none; the daemon must not send the
    # password in plain text where k3s would refuse to.
    if target.backend != "mysql":
        pytest.skip("tls= is a MySQL endpoint parameter")
    ds = target.open(target.endpoint() + "?tls=true")
    with pytest.raises(DatastoreRejected, match="TLS"):
        await ds.preflight()


async def test_preflight_missing_tls_file_is_rejected(target: Target, tmp_path: Path) -> None:
    no_sqlite(target)
    ds = target.open(target.endpoint(sslmode=None), ca_file=tmp_path / "absent.pem")
    with pytest.raises(DatastoreRejected, match=r"TLS|certificate"):
        await ds.preflight()


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


async def test_a_coordinator_that_dies_mid_role_write_blocks_nobody(target: Target) -> None:
    """The coordinator's machine dies (its packets stop; the server is not told) right after
    the first statement of a role write. Nothing it sent may keep rows locked: the others
    heartbeat at once and take over the coordinator lease once it expires."""
    no_sqlite(target)
    proxy = await Proxy(target.base.host, target.base.port).start()
    try:
        a = target.open(target.endpoint(host="127.0.0.1", port=proxy.port), retry_timeout=1.0)
        b = target.open(retry_timeout=1.0)
        for ds in (a, b):
            await ds.preflight()
            await ds.ensure_schema()
        await a.heartbeat(record("node-a"))
        await b.heartbeat(record("node-b"))
        assert await a.try_lease(COORDINATOR_LEASE, "node-a", 2.0)
        proxy.blackhole_after(2)  # (BEGIN and SELECT ... FOR UPDATE, if it sends them)
        with contextlib.suppress(DatastoreUnavailable):
            await a.assign_roles({"node-a": Role.SERVER, "node-b": Role.AGENT}, "node-a")
        started = time.monotonic()
        await b.heartbeat(record("node-b", ready=True))  # not blocked by the dead client
        took = False
        while not took and time.monotonic() - started < 15.0:
            with contextlib.suppress(DatastoreUnavailable):
                took = await b.try_lease(COORDINATOR_LEASE, "node-b", 10.0)
            if not took:
                await asyncio.sleep(0.5)
        assert took, "the coordinator lease stays locked by the dead client's transaction"
        assert await b.assign_roles({"node-b": Role.SERVER}, "node-b")
        assert {r.member.name: r.assigned for r in await b.members()}["node-b"] is Role.SERVER
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
        await asyncio.sleep(1.0)
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


async def test_missing_database_that_cannot_be_created_is_rejected(target: Target) -> None:
    if target.backend != "mysql":
        pytest.skip("needs a user without CREATE: only the MariaDB k3s user may create users")
    user, secret, missing = fresh_name(), "pw-" + fresh_name(), fresh_name()
    admin = target.base.database
    target.query(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{secret}'", database=admin)
    try:
        ep = target.endpoint(database=missing).replace(
            f"{target.base.user}:{target.base.password}@", f"{user}:{secret}@"
        )
        ds = target.open(ep)
        # (MariaDB answers 1044 "access denied to database" for a database an unprivileged
        # user may not see, existing or not; either way it is a rejection naming the database)
        with pytest.raises(DatastoreRejected, match=r"denied|may not create it") as info:
            await ds.preflight()
        assert secret not in str(info.value) and missing in str(info.value)
        assert not target.database_exists(missing)
    finally:
        target.query(f"DROP USER IF EXISTS '{user}'@'%'", database=admin)
