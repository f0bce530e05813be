"""Driver errors -> DatastoreUnavailable (retry) / DatastoreRejected (fix the config), table-driven.

The messages are the drivers' real texts; the real databases produce most of them in the
contract suite, these cover the ones a test cannot provoke safely (DNS, TLS, lost connections).
"""

from __future__ import annotations

import sqlite3

import psycopg2
import pymysql
import pytest

from k3snoded.datastore.endpoint import parse_endpoint
from k3snoded.datastore.mysql import MysqlDialect
from k3snoded.datastore.postgres import PostgresDialect
from k3snoded.datastore.sql import MissingDatabase
from k3snoded.datastore.sqlite import SqliteDialect
from k3snoded.errors import DatastoreError, DatastoreRejected, DatastoreUnavailable

SECRET = "Hunter2-secret"
U, R, M, E = DatastoreUnavailable, DatastoreRejected, MissingDatabase, DatastoreError

MYSQL = [
    (2003, "Can't connect to MySQL server on '10.0.0.5' ([Errno 111] Connection refused)", U),
    (2003, "Can't connect to MySQL server on 'db' ([Errno -2] Name or service not known)", U),
    (2003, "Can't connect to MySQL server on 'db' (timed out)", U),
    (2005, "Unknown MySQL server host 'db'", U),
    (2013, "Lost connection to MySQL server during query ([SSL] EOF occurred)", U),
    (2006, "MySQL server has gone away", U),
    (1040, "Too many connections", U),
    (1205, "Lock wait timeout exceeded; try restarting transaction", U),
    (1213, "Deadlock found when trying to get lock", U),
    (1045, f"Access denied for user 'k3s'@'10.0.0.9' (using password: {SECRET})", R),
    (1044, "Access denied for user 'k3s'@'%' to database 'k3s'", R),
    (1142, "CREATE command denied to user 'k3s'@'%' for table 'k3snoded_members'", R),
    (1049, "Unknown database 'k3s'", M),
    (2026, "SSL is required but the server doesn't support it", R),
    (2003, "Can't connect to MySQL server on 'db' ([SSL: CERTIFICATE_VERIFY_FAILED])", R),
    (1064, "You have an error in your SQL syntax", E),
]


@pytest.mark.parametrize(("code", "message", "kind"), MYSQL)
def test_mysql(code: int, message: str, kind: type[DatastoreError]) -> None:
    dialect = MysqlDialect(parse_endpoint(f"mysql://k3s:{SECRET}@tcp(10.0.0.5:3306)/k3s"), 2.0)
    cls = pymysql.err.ProgrammingError if code == 1064 else pymysql.err.OperationalError
    err = dialect.translate(cls(code, message))
    assert type(err) is kind
    assert str(err).startswith("mysql 10.0.0.5:3306/k3s: ")
    assert SECRET not in str(err)


class _PgError(psycopg2.OperationalError):  # type: ignore[misc]
    """psycopg2 sets ``pgcode`` from the server; a test cannot, so it is shadowed here."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(message)
        self._code = code

    @property
    def pgcode(self) -> str | None:
        return self._code


PG = [
    ('connection to server at "10.0.0.6", port 5432 failed: Connection refused', None, U),
    ('could not translate host name "db" to address: Name or service not known', None, U),
    ("timeout expired", None, U),
    ("SSL SYSCALL error: EOF detected", None, U),
    ("server closed the connection unexpectedly", None, U),
    ("FATAL:  sorry, too many clients already", "53300", U),
    ("canceling statement due to statement timeout", "57014", U),
    ("terminating connection due to administrator command", "57P01", U),
    (f'FATAL:  password authentication failed for user "k3s" {SECRET}', None, R),
    (
        'FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "k3s", database "k3s", SSL off',
        None,
        R,
    ),
    ('FATAL:  database "k3s" does not exist', None, M),
    ("server does not support SSL, but SSL was required", None, R),
    ('root certificate file "/etc/ca.pem" does not exist', None, R),
    ("SSL error: certificate verify failed", None, R),
    ("permission denied for schema public", "42501", R),
]


@pytest.mark.parametrize(("message", "code", "kind"), PG)
def test_postgres(message: str, code: str | None, kind: type[DatastoreError]) -> None:
    dialect = PostgresDialect(parse_endpoint(f"postgres://k3s:{SECRET}@10.0.0.6/k3s"), 2.0)
    err = dialect.translate(_PgError(message, code))
    assert type(err) is kind
    assert str(err).startswith("postgres 10.0.0.6:5432/k3s: ")
    assert SECRET not in str(err)


SQLITE = [
    (sqlite3.OperationalError("database is locked"), U),
    (sqlite3.OperationalError("unable to open database file"), R),
    (sqlite3.OperationalError("attempt to write a readonly database"), R),
    (sqlite3.IntegrityError("UNIQUE constraint failed"), E),
]


@pytest.mark.parametrize(("exc", "kind"), SQLITE)
def test_sqlite(exc: Exception, kind: type[DatastoreError]) -> None:
    dialect = SqliteDialect(parse_endpoint("sqlite:///var/lib/k3snoded/c.db"), 2.0)
    err = dialect.translate(exc)
    assert type(err) is kind
    assert "/var/lib/k3snoded/c.db" in str(err)
