"""One fixture, ``target``, parametrized over SQLite, MariaDB, PostgreSQL and the simulator's
in-memory model (``tests/sim/memstore.py``), so the model is held to the same contract.

Each test gets a fresh database of its own (created through the server as the k3s user and
dropped afterwards), and ``target.open()`` builds datastores on it that are closed at teardown.
``shift_heartbeats`` / ``shift_lease`` move stored times as a database clock step would.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pymysql
import pytest

from k3snoded.config import CoordinationConfig, DatastoreConfig
from k3snoded.datastore import Datastore, MemberRecord, open_datastore
from k3snoded.datastore.endpoint import Endpoint, parse_endpoint
from k3snoded.datastore.schema import LEASES, MEMBERS
from k3snoded.model import Role, RolePreference
from tests.sim.memstore import MemoryDatastore, Server


def fresh_name() -> str:
    return f"k3sn_{os.getpid()}_{uuid.uuid4().hex[:8]}"


class AlwaysUp:
    """The memory model's network when nothing is wrong with it."""

    state = "up"
    frozen = False
    kernel_alive = True

    async def thawed(self) -> None:
        return None

    def delay(self) -> float:
        return 0.001

    def answer_lost(self) -> bool:
        return False


@dataclass
class Target:
    backend: str  # "sqlite" | "mysql" | "postgres" | "memory"
    base: Endpoint  # server and credentials (from the shared fixture)
    database: str  # this test's database (SQLite: the file)
    created: list[str] = field(default_factory=list)
    stores: list[Datastore] = field(default_factory=list)
    memory: Server | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def is_memory(self) -> bool:
        return self.backend == "memory"

    def shift_heartbeats(self, seconds: float) -> None:
        """Add ``seconds`` to every stored heartbeat time (as if written that much later)."""
        if self.memory is not None:
            for row in self.memory.members.values():
                row.updated_at += seconds
            return
        self.query(f"UPDATE {MEMBERS} SET updated_at = updated_at + {float(seconds)}")

    def shift_lease(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to a lease's stored expiry (a database clock step back does this)."""
        if self.memory is not None:
            holder, expires = self.memory.leases[name]
            self.memory.leases[name] = (holder, expires + seconds)
            return
        self.query(
            f"UPDATE {LEASES} SET expires_at = expires_at + {float(seconds)} WHERE name = '{name}'"
        )

    def endpoint(
        self,
        *,
        database: str | None = None,
        password: str | None = None,
        host: str | None = None,
        port: int | None = None,
        sslmode: str | None = "disable",
    ) -> str:
        """A k3s-style endpoint for this test's database (or another one)."""
        ep = self.base
        db = database or self.database
        pw = ep.password if password is None else password
        addr = f"{host or ep.host}:{port or ep.port}"
        if self.backend == "mysql":
            return f"mysql://{ep.user}:{pw}@tcp({addr})/{db}"
        if self.backend == "postgres":
            query = f"?sslmode={sslmode}" if sslmode else ""
            return f"postgres://{ep.user}:{pw}@{addr}/{db}{query}"
        return ""

    def open(
        self,
        endpoint: str | None = None,
        *,
        retry_timeout: float = 2.0,
        ca_file: Path | None = None,
    ) -> Datastore:
        coord = CoordinationConfig(retry_timeout=retry_timeout)
        if self.memory is not None:
            ds: Datastore = MemoryDatastore(
                self.memory, AlwaysUp(), f"client-{len(self.stores)}", retry_timeout
            )
        elif self.is_sqlite:
            ds = open_datastore(DatastoreConfig(), coord, sqlite_path=Path(self.database))
        else:
            text = self.endpoint() if endpoint is None else endpoint
            ds = open_datastore(DatastoreConfig(endpoint=text, ca_file=ca_file), coord)
        self.stores.append(ds)
        return ds

    def _connect(self, database: str) -> Any:
        ep = self.base
        if self.backend == "mysql":
            return pymysql.connect(
                host=ep.host,
                port=ep.port,
                user=ep.user,
                password=ep.password,
                database=database or None,
                autocommit=True,
            )
        if self.backend == "postgres":
            conn = psycopg2.connect(
                host=ep.host, port=ep.port, user=ep.user, password=ep.password, dbname=database
            )
            conn.autocommit = True
            return conn
        return sqlite3.connect(database or self.database, isolation_level=None)

    def query(self, sql: str, database: str | None = None) -> Sequence[Sequence[Any]]:
        """Run raw SQL on the test's database, outside k3snoded (to check or to tamper)."""
        conn = self._connect(database or self.database)
        try:
            cur = conn.cursor()
            cur.execute(sql)
            rows = cur.fetchall() if cur.description else []
            cur.close()
            return list(rows)
        finally:
            conn.close()

    def database_exists(self, name: str) -> bool:
        if self.backend == "mysql":
            sql = f"SELECT 1 FROM information_schema.SCHEMATA WHERE schema_name = '{name}'"
            return bool(self.query(sql, database=self.base.database))
        if self.backend == "postgres":
            sql = f"SELECT 1 FROM pg_database WHERE datname = '{name}'"
            return bool(self.query(sql, database=self.base.database))
        return Path(name).exists()

    def create(self, name: str) -> None:
        self.created.append(name)
        if self.backend == "mysql":
            self.query(f"CREATE DATABASE `{name}`", database=self.base.database)
        elif self.backend == "postgres":
            # template0: CREATE DATABASE fails while anyone is connected to template1
            self.query(f'CREATE DATABASE "{name}" TEMPLATE template0', database=self.base.database)

    def drop_all(self) -> None:
        for name in self.created:
            if self.backend == "mysql":
                self.query(f"DROP DATABASE IF EXISTS `{name}`", database=self.base.database)
            elif self.backend == "postgres":
                self.query(
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database=self.base.database
                )


@pytest.fixture(params=["sqlite", "mysql", "postgres", "memory"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    backend: str = request.param
    if backend == "memory":
        t = Target("memory", parse_endpoint(""), "memory", memory=Server(time.monotonic))
    elif backend == "sqlite":
        t = Target("sqlite", parse_endpoint(""), str(tmp_path / "k3snoded.db"))
    else:
        dsn: str = request.getfixturevalue(f"{backend}_dsn")
        t = Target(backend, parse_endpoint(dsn), fresh_name())
        t.create(t.database)
    try:
        yield t
    finally:
        for ds in t.stores:
            await ds.close()
        t.drop_all()


def record(name: str, **kw: object) -> MemberRecord:
    """A member record with test defaults."""
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
    """A datastore on the test's database, preflighted and with the schema in place."""
    ds = target.open()
    await ds.preflight()
    await ds.ensure_schema()
    return ds


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def no_sqlite(target: Target) -> None:
    if target.is_sqlite or target.is_memory:
        pytest.skip("SQLite is a local file, the model has no wire: no server, credentials")


def no_memory(target: Target) -> None:
    if target.is_memory:
        pytest.skip("the model has no SQL schema, files or drivers")
