"""SQLite through the standard library: translation only (the SQL lives in sql.py).

One machine only: SQLite cannot coordinate machines (D1). It serves the single-server setup
and runs the same contract suite as the real databases. The "database clock" is this host's.
"""

from __future__ import annotations

import sqlite3
from typing import Any, ClassVar

from k3snoded.datastore.session import CountingCursor
from k3snoded.datastore.sql import Dialect
from k3snoded.errors import DatastoreError, DatastoreRejected, DatastoreUnavailable


class SqliteDialect(Dialect):
    name = "sqlite"
    placeholder = "?"
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    types: ClassVar[dict[str, str]] = {
        "float": "REAL",
        "table_options": "",
        "if_not_exists": "IF NOT EXISTS ",
    }

    @property
    def label(self) -> str:
        return f"sqlite {self.endpoint.path}"

    def connect(self) -> Any:
        conn = sqlite3.connect(self.endpoint.path, timeout=self.timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        except Exception:
            conn.close()
            raise
        return conn

    def create_database(self) -> None:
        """Nothing to do: ``connect`` creates the file."""

    def abort(self, conn: Any) -> None:
        conn.interrupt()

    def translate(self, exc: BaseException) -> DatastoreError:
        msg = str(exc)
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in msg or "busy" in msg or "interrupted" in msg:
                return DatastoreUnavailable(f"{self.label}: busy: {msg}")
            if "unable to open" in msg or "readonly" in msg or "disk" in msg:
                return DatastoreRejected(f"{self.label}: cannot use the file: {msg}")
        return DatastoreError(f"{self.label}: {type(exc).__name__}: {msg}")

    def lock_schema(self, cur: CountingCursor) -> None:
        cur.execute("BEGIN IMMEDIATE")

    def unlock_schema(self, cur: CountingCursor, ok: bool) -> None:
        cur.execute("COMMIT" if ok else "ROLLBACK")
