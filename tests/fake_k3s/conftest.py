"""Fixtures for the stand-in k3s tests: a launcher that ends its processes, per-test roots."""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fake_k3s.harness import Launcher


@pytest.fixture
def k3s(tmp_path: Path) -> Iterator[Launcher]:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    launcher = Launcher(logdir)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@dataclass(frozen=True)
class Db:
    """A fresh database for one test, as a k3s endpoint, dropped afterwards."""

    kind: str  # sqlite | mysql | postgres
    endpoint: str
    name: str


def _mysql_params(dsn: str) -> dict[str, object]:
    rest = dsn.split("://", 1)[1]
    creds, rest = rest.rsplit("@", 1)
    user, _, pw = creds.partition(":")
    addr = rest[rest.index("(") + 1 : rest.index(")")]
    host, _, port = addr.partition(":")
    return {"host": host, "port": int(port or 3306), "user": user, "password": pw}


def _pg_params(dsn: str) -> dict[str, object]:
    u = urllib.parse.urlsplit(dsn)
    return {
        "host": u.hostname,
        "port": u.port or 5432,
        "user": u.username,
        "password": u.password,
        "dbname": "postgres",
    }


def mysql_conn(dsn: str, db: str | None = None) -> object:
    import pymysql

    params = _mysql_params(dsn)
    return pymysql.connect(database=db, autocommit=True, connect_timeout=5, **params)


def pg_conn(dsn: str, db: str = "postgres") -> object:
    import psycopg2

    params = _pg_params(dsn)
    params["dbname"] = db
    conn = psycopg2.connect(connect_timeout=5, **params)
    conn.autocommit = True
    return conn


def make_db(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    name = f"t_{secrets.token_hex(6)}"
    if kind == "sqlite":
        yield Db("sqlite", f"sqlite://{tmp_path / 'shared.db'}", str(tmp_path / "shared.db"))
        return
    if kind == "mysql":
        dsn: str = request.getfixturevalue("mysql_dsn")
        base = dsn.rsplit("/", 1)[0]
        try:
            yield Db("mysql", f"{base}/{name}", name)
        finally:
            conn = mysql_conn(dsn)
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            conn.close()  # type: ignore[attr-defined]
        return
    dsn = request.getfixturevalue("postgres_dsn")
    u = urllib.parse.urlsplit(dsn)
    endpoint = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, ""))
    try:
        yield Db("postgres", endpoint, name)
    finally:
        conn = pg_conn(dsn)
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()  # type: ignore[attr-defined]


_MYSQL = pytest.param("mysql", marks=pytest.mark.db)
_POSTGRES = pytest.param("postgres", marks=pytest.mark.db)


@pytest.fixture(params=["sqlite", _MYSQL, _POSTGRES])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    yield from make_db(str(request.param), request, tmp_path)


@pytest.fixture(params=[_MYSQL, _POSTGRES])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """An external database several servers can share."""
    yield from make_db(str(request.param), request, tmp_path)
