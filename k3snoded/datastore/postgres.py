"""PostgreSQL through psycopg2: translation only (the SQL lives in sql.py)."""

from __future__ import annotations

import math
import os
import socket
from typing import Any, ClassVar

import psycopg2

from k3snoded.datastore.session import CountingCursor
from k3snoded.datastore.sql import Dialect, MissingDatabase
from k3snoded.errors import DatastoreError, DatastoreRejected, DatastoreUnavailable

_SCHEMA_LOCK = 0x6B33736E  # "k3sn"
# admin shutdown, crash shutdown, cannot connect now, too many connections, query canceled
# (statement_timeout), serialization failure, deadlock, lock not available
_TRANSIENT = {"57P01", "57P02", "57P03", "53300", "57014", "40001", "40P01", "55P03"}
# Negotiation or verification failures (the configuration is wrong), as opposed to a TLS
# connection that broke ("SSL SYSCALL error: EOF detected"), which is an outage.
_TLS_FAILURES = (
    "certificate",
    "does not support ssl",
    "ssl is not enabled",
    "sslmode",
    "handshake",
    "alert",
    "wrong version number",
    "could not load private key",
    "ssl error",
)
_BROKEN = ("ssl syscall", "closed unexpectedly", "eof detected", "server closed the connection")


class PostgresDialect(Dialect):
    name = "postgres"
    placeholder = "%s"
    now = "EXTRACT(EPOCH FROM now())::float8"
    types: ClassVar[dict[str, str]] = {
        "float": "DOUBLE PRECISION",
        "table_options": "",
        "if_not_exists": "IF NOT EXISTS ",
    }
    cte_upsert = True

    def _kwargs(self, database: str, statement_timeout: float | None = None) -> dict[str, Any]:
        ep = self.endpoint
        params = ep.postgres_params()
        millis = max(1, int(self.timeout * 1000))
        limit = max(1, int((statement_timeout or self.timeout) * 1000))
        options = params.pop("options", "")
        kw: dict[str, Any] = {
            "host": ep.host,
            "port": ep.port,
            "user": ep.user,
            "password": ep.password,
            "dbname": database,
            "connect_timeout": max(2, math.ceil(self.timeout)),  # libpq: whole seconds, >= 2
            "keepalives": 1,
            "keepalives_idle": max(1, int(self.timeout)),
            "keepalives_interval": 1,
            "keepalives_count": 2,
            "tcp_user_timeout": millis,
            # Statements and lock waits end in about retry_timeout; a session idle inside a
            # transaction, or whose client went silent (server-side keepalives), ends too.
            "options": (
                f"{options} -c statement_timeout={limit} -c lock_timeout={millis} "
                f"-c idle_in_transaction_session_timeout={max(1000, int(self.idle * 1000))} "
                "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
            ).strip(),
            "application_name": "k3snoded",
        }
        kw.update(params)
        return kw

    def connect(self) -> Any:
        conn = psycopg2.connect(**self._kwargs(self.endpoint.database))
        conn.autocommit = True
        return conn

    def create_database(self) -> None:
        # Like kine: through the "postgres" database, which pg_hba must allow.
        db = self.endpoint.database
        try:
            # CREATE DATABASE copies a template: allow it more than one statement's time.
            conn = psycopg2.connect(**self._kwargs("postgres", 3 * self.timeout))
        except Exception as e:
            raise self.translate(e) from None
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if not cur.fetchall():
                    quoted = db.replace('"', '""')
                    cur.execute(f'CREATE DATABASE "{quoted}"')
        except psycopg2.Error as e:
            if e.pgcode in ("42P04", "23505"):  # created concurrently by another node
                return
            if e.pgcode == "42501":
                raise DatastoreRejected(
                    f"{self.label}: database {db!r} does not exist and user "
                    f"{self.endpoint.user!r} may not create it: {self._msg(e)}"
                ) from None
            raise self.translate(e) from None
        finally:
            conn.close()

    def abort(self, conn: Any) -> None:
        try:
            sock = socket.socket(fileno=os.dup(conn.fileno()))
        except (OSError, psycopg2.Error):
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()

    def _msg(self, exc: BaseException) -> str:
        return self.scrub(" ".join(str(exc).split()))

    def translate(self, exc: BaseException) -> DatastoreError:
        where, msg = self.label, self._msg(exc)
        code = getattr(exc, "pgcode", None) or ""
        low = msg.lower()
        if code in ("28P01", "28000") or "authentication failed" in low or "pg_hba.conf" in low:
            return DatastoreRejected(
                f"{where}: authentication failed for user {self.endpoint.user!r}: {msg}"
            )
        if code == "42501":
            return DatastoreRejected(f"{where}: permission denied: {msg}")
        if code == "3D000" or ("database" in low and "does not exist" in low):
            return MissingDatabase(f"{where}: database does not exist: {msg}")
        if any(w in low for w in _BROKEN):
            return DatastoreUnavailable(f"{where}: connection lost: {msg}")
        if any(w in low for w in _TLS_FAILURES):
            return DatastoreRejected(f"{where}: TLS failure: {msg}")
        if code.startswith("08") or code in _TRANSIENT:
            return DatastoreUnavailable(f"{where}: unavailable: {msg}")
        if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError | OSError):
            return DatastoreUnavailable(f"{where}: unavailable: {msg}")
        return DatastoreError(f"{where}: {msg}")

    def check_tls(self, cur: CountingCursor) -> None:
        mode = self.endpoint.postgres_params().get("sslmode", "")
        if mode in ("require", "verify-ca", "verify-full") and not cur.connection.info.ssl_in_use:
            raise DatastoreRejected(f"{self.label}: TLS required but the connection is not TLS")

    def lock_schema(self, cur: CountingCursor) -> None:
        cur.execute("SELECT pg_advisory_lock(?)", (_SCHEMA_LOCK,))  # bounded by lock_timeout
        cur.fetchall()

    def unlock_schema(self, cur: CountingCursor, ok: bool) -> None:
        cur.execute("SELECT pg_advisory_unlock(?)", (_SCHEMA_LOCK,))
        cur.fetchall()
