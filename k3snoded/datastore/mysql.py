"""MySQL / MariaDB through PyMySQL: translation only (the SQL lives in sql.py)."""

# SQL text is built only from module constants; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import math
import socket
import ssl
from typing import Any, ClassVar

import pymysql

from k3snoded.datastore.session import CountingCursor
from k3snoded.datastore.sql import Dialect, MissingDatabase
from k3snoded.errors import DatastoreError, DatastoreRejected, DatastoreUnavailable

_AUTH = {1045, 1698, 1251}  # access denied, auth plugin, client does not support auth
_NO_DB_ACCESS = {1044}
_DENIED = {1142, 1227}  # command denied on a table; missing privilege
_UNKNOWN_DB = 1049
_TLS = {2026}  # SSL connection error
# Negotiation or verification failures in a "can't connect" (2003) message; a TLS connection
# that broke (EOF) is an outage, not a configuration error.
_TLS_FAILURES = ("certificate", "ssl is required", "handshake", "alert", "wrong version number")
# can't connect (socket, TCP, unknown host), gone away, lost, too many connections, shutdown,
# lock wait timeout, deadlock, killed, read timeout
_TRANSIENT = {2002, 2003, 2005, 2006, 2013, 2055, 1040, 1053, 1205, 1213, 1927, 3024}
_SCHEMA_LOCK = "k3snoded_schema"
_DUPLICATE_KEY_NAME = 1061


class MysqlDialect(Dialect):
    name = "mysql"
    placeholder = "%s"
    # Sessions run in UTC (init_command), so NOW(6) -> epoch has no DST ambiguity.
    now = "(UNIX_TIMESTAMP(NOW(6)) + 0e0)"
    types: ClassVar[dict[str, str]] = {
        "float": "DOUBLE",
        "table_options": " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "if_not_exists": "",  # MySQL 8 has no CREATE INDEX IF NOT EXISTS: see ddl()
    }

    def _kwargs(self, database: str | None) -> dict[str, Any]:
        ep = self.endpoint
        kw: dict[str, Any] = {
            "user": ep.user or "root",
            "password": ep.password,
            "database": database,
            "connect_timeout": self.timeout,
            "read_timeout": self.timeout,
            "write_timeout": self.timeout,
            "autocommit": True,
            "charset": "utf8mb4",
            # UTC; a lock wait fails in about retry_timeout (the server's default waits 50 s
            # after the client gave up); a silent session is closed after `idle`.
            "init_command": (
                "SET time_zone = '+00:00', "
                f"innodb_lock_wait_timeout = {max(1, math.ceil(self.timeout))}, "
                f"wait_timeout = {max(1, math.ceil(self.idle))}"
            ),
        }
        if ep.unix_socket:
            kw["unix_socket"] = ep.unix_socket
        else:
            kw["host"], kw["port"] = ep.host, ep.port
        context = self._tls_context()
        if context is not None:
            kw["ssl"] = context  # TLS required: no plain-text fallback
        elif ep.param("tls").lower() == "false":
            kw["ssl_disabled"] = True
        return kw

    def _tls_context(self) -> ssl.SSLContext | None:
        """TLS as k3s has it for the same endpoint: kine's context from the datastore TLS files,
        else go-sql-driver's ``tls=`` (``true``: verified against the system's roots,
        ``skip-verify``: not verified, ``preferred`` or none: PyMySQL's opportunistic TLS)."""
        files, mode = self.endpoint.mysql_ssl(), self.endpoint.param("tls").lower()
        try:
            if files:
                context = ssl.create_default_context(cafile=files.get("ca"))
                if "cert" in files:
                    context.load_cert_chain(files["cert"], files.get("key"))
                return context
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise DatastoreRejected(
                f"{self.label}: cannot load the datastore TLS files: {e}"
            ) from None
        if mode in ("true", "1"):
            return ssl.create_default_context()
        if mode == "skip-verify":
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            return context
        return None

    def connect(self) -> Any:
        return pymysql.connect(**self._kwargs(self.endpoint.database))

    def create_database(self) -> None:
        db = self.endpoint.database.replace("`", "``")
        try:
            conn = pymysql.connect(**self._kwargs(None))
        except Exception as e:
            raise self.translate(e) from None
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        except pymysql.err.Error as e:
            code = e.args[0] if e.args else 0
            if code in _NO_DB_ACCESS or code in _AUTH or code == 1227:
                raise DatastoreRejected(
                    f"{self.label}: database {self.endpoint.database!r} does not exist and user "
                    f"{self.endpoint.user!r} may not create it: {self.scrub(str(e.args[-1]))}"
                ) from None
            raise self.translate(e) from None
        finally:
            conn.close()

    def abort(self, conn: Any) -> None:
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def translate(self, exc: BaseException) -> DatastoreError:
        where = self.label
        if isinstance(exc, pymysql.err.Error) and exc.args and isinstance(exc.args[0], int):
            code = exc.args[0]
            msg = self.scrub(str(exc.args[1]) if len(exc.args) > 1 else "")
        elif isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
            return DatastoreRejected(f"{where}: TLS failure: {self.scrub(str(exc))}")
        elif isinstance(exc, OSError | TimeoutError | pymysql.err.Error):
            return DatastoreUnavailable(f"{where}: connection failed: {self.scrub(str(exc))}")
        else:
            return DatastoreError(f"{where}: {type(exc).__name__}: {self.scrub(str(exc))}")
        if code in _AUTH:
            return DatastoreRejected(
                f"{where}: authentication failed for user {self.endpoint.user!r} ({code}: {msg})"
            )
        if code in _NO_DB_ACCESS:
            return DatastoreRejected(f"{where}: access to the database denied ({code}: {msg})")
        if code in _DENIED:
            return DatastoreRejected(f"{where}: permission denied ({code}: {msg})")
        if code == _UNKNOWN_DB:
            return MissingDatabase(f"{where}: database does not exist ({code}: {msg})")
        if code in _TLS or (code == 2003 and any(w in msg.lower() for w in _TLS_FAILURES)):
            return DatastoreRejected(f"{where}: TLS failure ({code}: {msg})")
        if code in _TRANSIENT or isinstance(
            exc, pymysql.err.OperationalError | pymysql.err.InterfaceError
        ):
            return DatastoreUnavailable(f"{where}: unavailable ({code}: {msg})")
        return DatastoreError(f"{where}: error {code}: {msg}")

    def upsert(self, table: str, columns: Any, values: str, update: Any) -> str:
        sets = ", ".join(f"{c} = VALUES({c})" for c in update)
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) "
            f"ON DUPLICATE KEY UPDATE {sets}"
        )

    def insert_if_absent(self, table: str, columns: Any, values: str) -> str:
        key = columns[0]
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) "
            f"ON DUPLICATE KEY UPDATE {key} = {key}"
        )

    def lease_upsert(self) -> str:
        # Assignments run left to right: `holder` first, then `expires_at` follows the new
        # holder. Without CLIENT_FOUND_ROWS the row count is 1 (inserted), 2 (changed) or
        # 0 (unchanged: held by someone else and not expired).
        return (
            f"INSERT INTO k3snoded_leases (name, holder, expires_at) VALUES (?, ?, {self.now} + ?) "
            "ON DUPLICATE KEY UPDATE "
            "holder = IF(holder = VALUES(holder) "
            f"OR expires_at <= {self.now} OR expires_at > VALUES(expires_at) + ?, "
            "VALUES(holder), holder), "
            "expires_at = IF(holder = VALUES(holder), VALUES(expires_at), expires_at)"
        )

    def ddl(self, cur: CountingCursor, statement: str) -> None:
        """An index that exists already (a step that ran but was not recorded) is no error."""
        try:
            cur.execute(statement)
        except pymysql.err.Error as e:
            if not (e.args and e.args[0] == _DUPLICATE_KEY_NAME):
                raise

    def lock_schema(self, cur: CountingCursor) -> None:
        cur.execute("SELECT GET_LOCK(?, ?)", (_SCHEMA_LOCK, max(1, int(self.timeout))))
        (got,) = cur.fetchall()[0]
        if got != 1:
            raise DatastoreUnavailable(f"{self.label}: timed out waiting for the schema lock")

    def unlock_schema(self, cur: CountingCursor, ok: bool) -> None:
        cur.execute("DO RELEASE_LOCK(?)", (_SCHEMA_LOCK,))
