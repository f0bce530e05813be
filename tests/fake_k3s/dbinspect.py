"""Read what the stand-in wrote into a test database, through the real drivers."""

from __future__ import annotations

import sqlite3
from typing import Any

from tests.fake_k3s.conftest import Db, mysql_conn, pg_conn


def query(db: Db, dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one query against the test database (``dsn`` = the mysql/postgres fixture DSN)."""
    if db.kind == "sqlite":
        conn = sqlite3.connect(db.name)
        try:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()
    conn2: Any = mysql_conn(dsn, db.name) if db.kind == "mysql" else pg_conn(dsn, db.name)
    try:
        with conn2.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), params)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn2.close()


def columns(db: Db, dsn: str) -> list[str]:
    if db.kind == "sqlite":
        return [str(r[1]) for r in query(db, dsn, "PRAGMA table_info(kine)")]
    if db.kind == "mysql":
        return [str(r[0]) for r in query(db, dsn, "SHOW COLUMNS FROM kine")]
    rows = query(
        db,
        dsn,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'kine'"
        " ORDER BY ordinal_position",
    )
    return [str(r[0]) for r in rows]


def indexes(db: Db, dsn: str) -> set[str]:
    if db.kind == "sqlite":
        return {str(r[1]) for r in query(db, dsn, "PRAGMA index_list(kine)")}
    if db.kind == "mysql":
        return {str(r[2]) for r in query(db, dsn, "SHOW INDEX FROM kine")} - {"PRIMARY"}
    rows = query(db, dsn, "SELECT indexname FROM pg_indexes WHERE tablename = 'kine'")
    return {str(r[0]) for r in rows} - {"kine_pkey"}
