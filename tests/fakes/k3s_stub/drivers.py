"""Per-database pieces of the kine emulation: connect, create the database, DDL, error mapping.

Drivers are imported lazily. Every call here blocks; datastore.py runs them in threads.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

from tests.fakes.k3s_stub import logs
from tests.fakes.k3s_stub.endpoint import Endpoint

TIMEOUT = 5

MYSQL_DDL = (
    """CREATE TABLE IF NOT EXISTS kine
    (
        id BIGINT UNSIGNED AUTO_INCREMENT,
        name VARCHAR(630) CHARACTER SET ascii,
        created INTEGER,
        deleted INTEGER,
        create_revision BIGINT UNSIGNED,
        prev_revision BIGINT UNSIGNED,
        lease INTEGER,
        value MEDIUMBLOB,
        old_value MEDIUMBLOB,
        PRIMARY KEY (id)
    );""",
    "CREATE INDEX kine_name_index ON kine (name)",
    "CREATE INDEX kine_name_id_index ON kine (name,id)",
    "CREATE INDEX kine_id_deleted_index ON kine (id,deleted)",
    "CREATE INDEX kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX kine_name_prev_revision_uindex ON kine (name, prev_revision)",
)

POSTGRES_DDL = (
    """CREATE TABLE IF NOT EXISTS kine
    (
        id BIGSERIAL PRIMARY KEY,
        name text COLLATE "C",
        created INTEGER,
        deleted INTEGER,
        create_revision BIGINT,
        prev_revision BIGINT,
        lease INTEGER,
        value bytea,
        old_value bytea
    );""",
    "CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)",
    "CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name,id)",
    "CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id,deleted)",
    "CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex"
    " ON kine (name, prev_revision)",
    "CREATE INDEX IF NOT EXISTS kine_list_query_index on kine(name, id DESC, deleted)",
)

SQLITE_DDL = (
    """CREATE TABLE IF NOT EXISTS kine
    (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name INTEGER,
        created INTEGER,
        deleted INTEGER,
        create_revision INTEGER,
        prev_revision INTEGER,
        lease INTEGER,
        value BLOB,
        old_value BLOB
    )""",
    "CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)",
    "CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name,id)",
    "CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id,deleted)",
    "CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex"
    " ON kine (name, prev_revision)",
    "CREATE INDEX IF NOT EXISTS kine_id_compact_rev_key_with_prev_revision_index ON kine(id, name, "
    "prev_revision) WHERE name != 'compact_rev_key' AND prev_revision != 0",
)


class Fatal(Exception):
    """A startup error kine returns to k3s (fatal, exit 1)."""


def _dial_error(ep: Endpoint, exc: BaseException) -> str:
    """Go's net error text for a failed TCP dial, from an OSError found in the chain."""
    text = str(exc)
    for code, words in (
        (errno.ECONNREFUSED, "connection refused"),
        (errno.EHOSTUNREACH, "no route to host"),
        (errno.ENETUNREACH, "network is unreachable"),
    ):
        if f"Errno {code}]" in text or words.lower() in text.lower():
            return f"dial tcp {ep.address}: connect: {words}"
    if "timed out" in text.lower():
        return f"dial tcp {ep.address}: i/o timeout"
    return text


def mysql_error(ep: Endpoint, exc: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        code, msg = args[0], str(args[1])
        if code in (2003, 2006, 2013):
            return _dial_error(ep, exc)
        return f"Error {code}: {msg}"
    return str(exc)


def postgres_error(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def is_duplicate(driver: str, exc: BaseException) -> bool:
    if driver == "sqlite":
        return isinstance(exc, sqlite3.IntegrityError)
    if driver == "mysql":
        args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
        return bool(args) and args[0] == 1062
    return getattr(exc, "pgcode", None) == "23505"


def _mysql_connect(ep: Endpoint, db: str | None) -> Any:
    import pymysql

    kwargs: dict[str, Any] = {
        "user": ep.user,
        "password": ep.password,
        "connect_timeout": TIMEOUT,
        "read_timeout": TIMEOUT,
        "write_timeout": TIMEOUT,
        "autocommit": True,
    }
    if db:
        kwargs["database"] = db
    if ep.cafile or ep.certfile:
        ssl: dict[str, str] = {}
        for key, path in (("ca", ep.cafile), ("cert", ep.certfile), ("key", ep.keyfile)):
            if path:
                ssl[key] = path
        kwargs["ssl"] = ssl
    if ep.unix_socket:
        kwargs["unix_socket"] = ep.unix_socket
    else:
        kwargs["host"], kwargs["port"] = ep.host, ep.port
    return pymysql.connect(**kwargs)


def _pg_connect(ep: Endpoint, db: str) -> Any:
    import psycopg2

    kwargs: dict[str, Any] = {
        "host": ep.host,
        "port": ep.port,
        "user": ep.user,
        "password": ep.password,
        "dbname": db,
        "connect_timeout": TIMEOUT,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
        "options": f"-c statement_timeout={TIMEOUT * 1000}",
    }
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name"):
        if key in ep.params:
            kwargs[key] = ep.params[key]
    if ep.cafile or ep.certfile or ep.keyfile:
        # kine: the datastore TLS files, and verify-full unless the DSN names an sslmode.
        for key, path in (
            ("sslrootcert", ep.cafile),
            ("sslcert", ep.certfile),
            ("sslkey", ep.keyfile),
        ):
            if path:
                kwargs[key] = path
        kwargs.setdefault("sslmode", "verify-full")
    conn = psycopg2.connect(**kwargs)
    conn.autocommit = True
    return conn


def create_database(ep: Endpoint) -> None:
    """createDBIfNotExist: MySQL errors are fatal; PostgreSQL ones are only warnings."""
    if ep.driver == "mysql":
        try:
            conn = _mysql_connect(ep, None)
        except Exception as exc:
            raise Fatal(mysql_error(ep, exc)) from exc
        try:
            with conn.cursor() as cur:
                try:
                    cur.execute(
                        "SELECT 1 FROM information_schema.SCHEMATA WHERE schema_name = %s",
                        (ep.database,),
                    )
                    if cur.fetchone():
                        return
                except Exception as exc:
                    logs.warning(
                        f"failed to check existence of database {ep.database}, going to attempt"
                        f" create: {mysql_error(ep, exc)}"
                    )
                try:
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{ep.database}`;")
                except Exception as exc:
                    raise Fatal(mysql_error(ep, exc)) from exc
        finally:
            conn.close()
    elif ep.driver == "postgres":
        try:
            conn = _pg_connect(ep, "postgres")
        except Exception as exc:
            logs.warning(
                "failed to ensure existence of database postgres: unable to connect to default"
                f" postgres database: {postgres_error(exc)}"
            )
            return
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (ep.database,))
                if cur.fetchone():
                    return
                logs.info(f"creating database {ep.database}")
                try:
                    cur.execute(f'CREATE DATABASE "{ep.database}";')
                except Exception as exc:
                    logs.warning(f"failed to create database {ep.database}: {postgres_error(exc)}")
        except Exception as exc:
            logs.warning(f"failed to create database {ep.database}: {postgres_error(exc)}")
        finally:
            conn.close()


def connect(ep: Endpoint) -> Any:
    """A DB-API connection (autocommit) to the kine database."""
    if ep.driver == "mysql":
        return _mysql_connect(ep, ep.database)
    if ep.driver == "postgres":
        return _pg_connect(ep, ep.database)
    Path(ep.database).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(ep.database, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def error_text(ep: Endpoint, exc: BaseException) -> str:
    if ep.driver == "mysql":
        return mysql_error(ep, exc)
    if ep.driver == "postgres":
        return postgres_error(exc)
    return str(exc)


def ddl(driver: str) -> tuple[str, ...]:
    return {"mysql": MYSQL_DDL, "postgres": POSTGRES_DDL}.get(driver, SQLITE_DDL)


def pool_line(driver: str) -> str:
    if driver == "sqlite":
        return (
            "Configuring sqlite3 database connection pooling: maxIdleConns=2, maxOpenConns=0,"
            " connMaxLifetime=0s"
        )
    name = "mysql" if driver == "mysql" else "postgres"
    return (
        f"Configuring {name} database connection pooling: maxIdle=20, maxOpen=0,"
        " maxLifetime=0s, maxIdleTime=0s"
    )
