"""Endpoint parsing: k3s's datastore endpoint formats, read the way kine reads them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k3snoded.config import CoordinationConfig, DatastoreConfig
from k3snoded.datastore import open_datastore
from k3snoded.datastore.endpoint import Backend, Endpoint, EndpointError, parse_endpoint

CASES: list[tuple[str, dict[str, object]]] = [
    ("", {"backend": Backend.SQLITE, "path": ""}),
    ("sqlite:///var/lib/x/state.db", {"backend": Backend.SQLITE, "path": "/var/lib/x/state.db"}),
    (
        "sqlite://state.db?_journal_mode=WAL",
        {"path": "state.db", "params": (("_journal_mode", "WAL"),)},
    ),
    (
        "mysql://k3s:secret@tcp(10.0.0.5:3307)/k3sdb",
        {
            "backend": Backend.MYSQL,
            "user": "k3s",
            "password": "secret",
            "host": "10.0.0.5",
            "port": 3307,
            "database": "k3sdb",
        },
    ),
    (
        "mysql://k3s:pa:ss@w/rd@tcp(db.example:3306)/",
        {"user": "k3s", "password": "pa:ss@w/rd", "host": "db.example", "database": "kubernetes"},
    ),
    # go-sql-driver takes the password literally: no percent-decoding for MySQL.
    ("mysql://u:p%40ss@tcp(h)/d", {"password": "p%40ss", "host": "h", "port": 3306}),
    ("mysql://u@tcp([::1]:3306)/d", {"user": "u", "password": "", "host": "::1", "port": 3306}),
    ("mysql://u:p@/d", {"host": "127.0.0.1", "port": 3306, "database": "d"}),
    (
        "mysql://",
        {"user": "root", "unix_socket": "/var/run/mysqld/mysqld.sock", "database": "kubernetes"},
    ),
    ("mysql://u:p@unix(/run/my.sock)/Db", {"unix_socket": "/run/my.sock", "database": "Db"}),
    (
        "mysql://u:p@tcp(h:1)/d?timeout=5s&tls=false",
        {"params": (("timeout", "5s"), ("tls", "false"))},
    ),
    (
        "postgres://k3s:s%40cret@10.0.0.6:5433/K3S?sslmode=require",
        {
            "backend": Backend.POSTGRES,
            "user": "k3s",
            "password": "s@cret",
            "host": "10.0.0.6",
            "port": 5433,
            "database": "k3s",
            "params": (("sslmode", "require"),),
        },
    ),
    ("postgresql://u:p@h/", {"scheme": "postgresql", "port": 5432, "database": "kubernetes"}),
    ("postgres://u:p@[fd00::1]:6000/db", {"host": "fd00::1", "port": 6000}),
    (
        "postgres://",
        {
            "user": "postgres",
            "password": "postgres",
            "host": "localhost",
            "port": 5432,
            "database": "kubernetes",
        },
    ),
    (
        "https://u:p@e1:2379,https://e2:2379",
        {"backend": Backend.ETCD, "urls": ("https://e1:2379", "https://e2:2379")},
    ),
    ("http://127.0.0.1:2379", {"backend": Backend.ETCD}),
    ("nats://", {"backend": Backend.OTHER, "scheme": "nats"}),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0] or "empty" for c in CASES])
def test_parse(text: str, expected: dict[str, object]) -> None:
    ep = parse_endpoint(text)
    for key, value in expected.items():
        assert getattr(ep, key) == value, key


BAD = [
    ("k3s:k3s@tcp(h:3306)/db", "endpoint should be a DSN URI"),
    ("mysql://u:p@h:3306/db", r"default addr for network unknown \(write the address as tcp"),
    ("mysql://u:p@tcp(h:3306/db", "address not closed"),
    ("mysql://u:p@tcp(h:99999)/db", "bad port"),
    ("mysql://u:p@tcp(h)", "missing the slash"),
    ("postgres://u:p@h:port/db", "bad port"),
    ("postgres://u:p@a:1,b:2/db", "several hosts"),
    ("foo://bar", "unknown datastore driver"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(EndpointError, match=message):
        parse_endpoint(text)


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown datastore driver"):
        parse_endpoint("foo://x")


def test_redacted_never_shows_the_password() -> None:
    for text in (
        "mysql://k3s:hunter2@tcp(10.0.0.5:3306)/k3s",
        "postgres://k3s:hunter2@10.0.0.5/k3s?sslmode=disable",
        "https://root:hunter2@e1:2379",
    ):
        ep = parse_endpoint(text)
        assert "hunter2" not in ep.redacted()
        assert "hunter2" not in str(ep)
        assert "hunter2" not in repr(ep)
    assert (
        parse_endpoint("mysql://k3s:hunter2@tcp(10.0.0.5:3306)/k3s").redacted()
        == "mysql://k3s:***@tcp(10.0.0.5:3306)/k3s"
    )
    assert (
        parse_endpoint("postgres://k3s:x@h:5432/db?sslmode=disable").redacted()
        == "postgres://k3s:***@h:5432/db?sslmode=disable"
    )


def test_mysql_tls_files() -> None:
    ep = parse_endpoint("mysql://", ca_file="/ca.pem", cert_file="/c.pem", key_file="/k.pem")
    # kine: with TLS files, `mysql://` alone dials tcp 127.0.0.1 instead of the unix socket
    assert (ep.host, ep.port, ep.unix_socket) == ("127.0.0.1", 3306, "")
    assert ep.mysql_ssl() == {"ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"}
    assert parse_endpoint("mysql://u:p@tcp(h)/d").mysql_ssl() == {}


def test_postgres_tls_files_force_verify_full_unless_sslmode_given() -> None:
    ep = parse_endpoint("postgres://u:p@h/d", ca_file=Path("/ca.pem"))
    assert ep.postgres_params() == {"sslrootcert": "/ca.pem", "sslmode": "verify-full"}
    ep = parse_endpoint("postgres://u:p@h/d?sslmode=require&pool_max_conns=4", ca_file="/ca")
    assert ep.postgres_params() == {"sslmode": "require", "sslrootcert": "/ca"}
    assert parse_endpoint("postgres://u:p@h/d").postgres_params() == {}


def test_cert_without_key_is_an_error() -> None:
    with pytest.raises(EndpointError, match="together"):
        parse_endpoint("mysql://u:p@tcp(h)/d", cert_file="/c.pem")


@pytest.mark.parametrize("text", ["https://e1:2379,https://e2:2379", "nats://", "etcd://"])
def test_open_datastore_refuses_backends_it_cannot_coordinate_through(text: str) -> None:
    with pytest.raises(EndpointError, match="not supported for coordination"):
        open_datastore(DatastoreConfig(endpoint=text), CoordinationConfig())


def test_open_datastore_sqlite_needs_a_file() -> None:
    with pytest.raises(EndpointError, match="sqlite_path"):
        open_datastore(DatastoreConfig(endpoint=""), CoordinationConfig())


def test_with_helpers_keep_the_rest() -> None:
    ep = parse_endpoint("postgres://u:p@h:1/d?sslmode=disable")
    other = ep.with_database("x").with_password("q").with_address("127.0.0.1", 2)
    assert (other.database, other.password, other.host, other.port) == ("x", "q", "127.0.0.1", 2)
    assert other.params == ep.params
    assert isinstance(other, Endpoint)


_pieces = st.sampled_from(
    [
        "mysql://",
        "postgres://",
        "postgresql://",
        "sqlite://",
        "https://",
        "tcp(",
        "unix(",
        ")",
        "/",
        "@",
        ":",
        "?",
        "&",
        "=",
        ",",
        "[",
        "]",
        "%",
        "%zz",
        "%41",
        "3306",
        "99999",
        "host",
        "::1",
        "sslmode=verify-full",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(max_size=60), st.lists(_pieces | st.text(max_size=4), max_size=12).map("".join)
    )
)
def test_fuzz_parser_returns_a_value_or_a_clean_error(text: str) -> None:
    try:
        ep = parse_endpoint(text)
    except EndpointError:
        return
    assert isinstance(ep.backend, Backend)
    assert isinstance(ep.redacted(), str)
    assert isinstance(ep.address, str)
    ep.postgres_params()
    if ep.password and ep.backend in (Backend.MYSQL, Backend.POSTGRES):
        assert ":***@" in ep.redacted()


@settings(max_examples=200, deadline=None)
@given(st.lists(_pieces | st.text(max_size=4), max_size=12).map("".join))
def test_fuzz_open_datastore_builds_or_refuses_cleanly(text: str) -> None:
    cfg = DatastoreConfig(endpoint=text)
    try:
        ds = open_datastore(cfg, CoordinationConfig(), sqlite_path=Path("/nonexistent/k3snoded.db"))
    except EndpointError:
        return
    assert ds.statements == 0  # built without any I/O


SECRET = "S3cr3tToken"


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            "mysql://u:{pw}@tcp(h:3306)/d",
            "mysql://u:{pw}/d",
            "postgres://u:{pw}@h/d",
            "{pw}@mysql://x",
            "u:{pw}@host:3306/db",
            "postgres://u:{pw}@h:1,h:2/d",
            "mysql://u:{pw}@tcp(h:99999)/d",
            "postgres://u:{pw}@h/d?a&b",
        ]
    ),
    st.lists(_pieces | st.text(max_size=3), max_size=4).map("".join),
    st.lists(_pieces | st.text(max_size=3), max_size=4).map("".join),
)
def test_fuzz_errors_never_contain_the_password(template: str, before: str, after: str) -> None:
    text = template.format(pw=f"{before}{SECRET}{after}")
    try:
        ep = parse_endpoint(text)
    except EndpointError as e:
        assert SECRET not in str(e)
        return
    if ep.password and SECRET in ep.password:
        assert SECRET not in ep.redacted()


def test_drivers_are_imported_only_for_the_backend_in_use() -> None:
    # A MySQL install without psycopg2 (and vice versa) must work: block one driver entirely.
    code = """
import sys
sys.modules["psycopg2"] = None
from k3snoded.config import CoordinationConfig, DatastoreConfig
from k3snoded.datastore import open_datastore
ds = open_datastore(DatastoreConfig("mysql://u:p@tcp(127.0.0.1:9)/d"), CoordinationConfig())
assert type(ds).__name__ == "SqlDatastore"
assert "pymysql" in sys.modules
sys.modules["pymysql"] = None
del sys.modules["k3snoded.datastore.mysql"]
try:
    open_datastore(DatastoreConfig("mysql://u:p@tcp(127.0.0.1:9)/d"), CoordinationConfig())
except ImportError:
    print("ok")
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
