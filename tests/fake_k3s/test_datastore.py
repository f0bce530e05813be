"""Datastore contract (§1.2-§1.5, §2.4): kine table, bootstrap data, shared CA, failures."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import pytest

from tests.fake_k3s.client import admin, get
from tests.fake_k3s.conftest import Db
from tests.fake_k3s.dbinspect import columns, indexes, query
from tests.fake_k3s.harness import Launcher, TcpProxy, free_port, new_node
from tests.fakes.k3s_stub import bootstrap
from tests.fakes.k3s_stub.datastore import Store
from tests.fakes.k3s_stub.endpoint import EndpointError, parse

COLUMNS = [
    "id",
    "name",
    "created",
    "deleted",
    "create_revision",
    "prev_revision",
    "lease",
    "value",
    "old_value",
]
INDEXES = {
    "kine_name_index",
    "kine_name_id_index",
    "kine_id_deleted_index",
    "kine_prev_revision_index",
    "kine_name_prev_revision_uindex",
}
EXTRA_INDEXES = {
    "sqlite": {"kine_id_compact_rev_key_with_prev_revision_index"},
    "mysql": set(),
    "postgres": {"kine_list_query_index"},
}


def _dsn(db: Db, request: pytest.FixtureRequest) -> str:
    if db.kind == "sqlite":
        return ""
    return str(request.getfixturevalue("mysql_dsn" if db.kind == "mysql" else "postgres_dsn"))


def test_kine_schema_and_bootstrap_rows(
    k3s: Launcher, tmp_path: Path, db: Db, request: pytest.FixtureRequest
) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "pw1", "--datastore-endpoint", db.endpoint), node.env)
    s.wait_log("k3s is up and running")
    assert "Database tables and indexes are up to date" in s.log()
    dsn = _dsn(db, request)
    assert columns(db, dsn) == COLUMNS
    assert indexes(db, dsn) == INDEXES | EXTRA_INDEXES[db.kind]
    compact = query(db, dsn, "SELECT created, deleted FROM kine WHERE name = 'compact_rev_key'")
    assert compact == [(0, 0)]
    key = "/bootstrap/" + hashlib.sha256(b"pw1").hexdigest()[:12]
    rows = query(db, dsn, "SELECT value, created FROM kine WHERE name = ?", (key,))
    # The lock (an empty create) was filled by an update: one row left, created = 0.
    assert len(rows) == 1 and rows[0][1] == 0
    value = bytes(rows[0][0])
    salt, _, _ = value.decode().partition(":")
    assert len(salt) == 16
    data = json.loads(bootstrap.decrypt("pw1", value))
    ca = get(f"https://127.0.0.1:{node.port}/cacerts").body
    import base64

    assert base64.b64decode(data["ServerCA"]["Content"]) == ca
    assert {"ServerCAKey", "ClientCA", "ClientCAKey", "ServiceKey", "PasswdFile"} <= set(data)
    with pytest.raises(bootstrap.BootstrapError):
        bootstrap.decrypt("other", value)


def test_second_server_adopts_the_ca(k3s: Launcher, tmp_path: Path, db: Db) -> None:
    n1, n2 = new_node(tmp_path, "s1"), new_node(tmp_path, "s2")
    s1 = k3s.start(
        n1.server_args("--token", "pw", "--datastore-endpoint", db.endpoint, ip="127.0.0.2"),
        n1.env,
    )
    s1.wait_log("k3s is up and running")
    token = (n1.server_dir / "token").read_text()
    s2 = k3s.start(
        n2.server_args(
            "--token", token.strip(), "--datastore-endpoint", db.endpoint, ip="127.0.0.3"
        ),
        n2.env,
    )
    s2.wait_log("k3s is up and running")
    assert "Reconciling bootstrap data between datastore and disk" in s2.log()
    ca1 = get(f"https://127.0.0.2:{n1.port}/cacerts").body
    ca2 = get(f"https://127.0.0.3:{n2.port}/cacerts").body
    assert ca1 == ca2
    assert (n2.server_dir / "token").read_text() == token
    deadline = time.monotonic() + 10
    expected = sorted([f"127.0.0.2:{n1.port}", f"127.0.0.3:{n2.port}"])
    servers: list[str] = []
    while time.monotonic() < deadline:
        servers = json.loads(
            get(f"https://127.0.0.2:{n1.port}/v1-k3s/apiservers", auth=("node", "pw")).body
        )
        if servers == expected:
            break
        time.sleep(0.3)
    assert servers == expected


def _first_then_second(k3s: Launcher, tmp_path: Path, endpoint: str, extra: list[str]) -> str:
    n1, n2 = new_node(tmp_path, "s1"), new_node(tmp_path, "s2")
    s1 = k3s.start(
        n1.server_args("--token", "pw", "--datastore-endpoint", endpoint, ip="127.0.0.2"),
        n1.env,
    )
    s1.wait_log("k3s is up and running")
    args = n2.server_args(*extra, "--datastore-endpoint", endpoint, ip="127.0.0.3")
    rc, _, err = k3s.run(args, n2.env)
    assert rc == 1
    assert "level=fatal" in err
    return err


def test_different_token_is_fatal(k3s: Launcher, tmp_path: Path, db: Db) -> None:
    err = _first_then_second(k3s, tmp_path, db.endpoint, ["--token", "other"])
    assert "bootstrap data already found and encrypted with different token" in err


def test_no_token_on_an_existing_cluster_is_fatal(k3s: Launcher, tmp_path: Path) -> None:
    """A generated password never matches existing bootstrap data (k3s PR #12396)."""
    err = _first_then_second(k3s, tmp_path, f"sqlite://{tmp_path / 'shared.db'}", [])
    assert "bootstrap data already found and encrypted with different token" in err


def test_mysql_unreachable_fails_fast(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    port = free_port()
    endpoint = f"mysql://k3s:k3s@tcp(127.0.0.1:{port})/k3s"
    started = time.monotonic()
    rc, _, err = k3s.run(
        node.server_args("--token", "pw", "--datastore-endpoint", endpoint), node.env
    )
    assert rc == 1
    assert time.monotonic() - started < 8
    assert f"dial tcp 127.0.0.1:{port}: connect: connection refused" in err
    assert "level=fatal" in err


def test_mysql_dsn_without_tcp_is_fatal(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    endpoint = "mysql://k3s:k3s@127.0.0.1:3306/k3s"
    rc, _, err = k3s.run(
        node.server_args("--token", "pw", "--datastore-endpoint", endpoint), node.env
    )
    assert rc == 1
    assert "default addr for network '127.0.0.1:3306' unknown" in err


def test_postgres_unreachable_retries_every_second(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    endpoint = f"postgres://k3s:k3s@127.0.0.1:{free_port()}/k3s?sslmode=disable"
    s = k3s.start(node.server_args("--token", "pw", "--datastore-endpoint", endpoint), node.env)
    s.wait_log("Failed to ping database connection", timeout=15, count=3)
    log = s.log()
    assert "failed to ensure existence of database postgres" in log
    assert s.proc.poll() is None
    assert "k3s is up and running" not in log
    s.signal()
    assert s.wait_exit(15) == 0


def _proxied(db: Db) -> tuple[TcpProxy, str]:
    port = 3306 if db.kind == "mysql" else 5432
    proxy = TcpProxy(("127.0.0.1", port))
    return proxy, db.endpoint.replace(f":{port}", f":{proxy.port}")


def test_datastore_loss_only_the_leader_exits(k3s: Launcher, tmp_path: Path, shared_db: Db) -> None:
    """Only the holder of the controller-manager lease exits (status 1, ``leaderelection
    lost``); a server that leads nothing keeps running and answering /ping, while /readyz
    (the apiserver's etcd check) fails."""
    (p1, e1), (p2, e2) = _proxied(shared_db), _proxied(shared_db)
    n1, n2 = new_node(tmp_path, "s1"), new_node(tmp_path, "s2")
    env = {"K3S_FAKE_DATASTORE_LOSS_EXIT": "3", "K3S_FAKE_LEASE_INTERVAL": "0.5"}
    leader = k3s.start(
        n1.server_args("--token", "pw", "--datastore-endpoint", e1, ip="127.0.0.2"),
        {**n1.env, **env},
    )
    leader.wait_log("k3s is up and running")
    leader.wait_log("successfully acquired lease kube-system/kube-controller-manager")
    other = k3s.start(
        n2.server_args("--token", "pw", "--datastore-endpoint", e2, ip="127.0.0.3"),
        {**n2.env, **env},
    )
    other.wait_log("k3s is up and running")
    readyz = f"https://127.0.0.3:{n2.port}/readyz"
    assert get(readyz, cert=admin(n2.server_dir)).status == 200
    p1.cut()
    p2.cut()
    assert leader.wait_exit(30) == 1
    assert "leaderelection lost" in leader.log()
    time.sleep(4.0)  # longer than the renew deadline
    assert other.proc.poll() is None, other.log()
    assert "acquired lease" not in other.log()
    assert get(f"https://127.0.0.3:{n2.port}/ping").body == b"pong"
    reply = get(readyz, cert=admin(n2.server_dir), timeout=10)
    assert reply.status == 500 and b"[-]etcd failed" in reply.body


def test_cluster_init_ignored_with_sql(k3s: Launcher, tmp_path: Path, shared_db: Db) -> None:
    node = new_node(tmp_path, "s1")
    args = node.server_args(
        "--token", "pw", "--cluster-init", "--datastore-endpoint", shared_db.endpoint
    )
    s = k3s.start(args, node.env)
    s.wait_log("k3s is up and running")
    assert "Kine available at unix://kine.sock" in s.log()


def test_endpoint_grammar() -> None:
    default = "/d/server/db/state.db"
    assert parse("", default).driver == "sqlite"
    assert parse("", default).database == default
    assert parse("sqlite://", default).database == default
    assert parse("sqlite:///x/y.db?_journal=WAL", default).database == "/x/y.db"
    m = parse("mysql://u:p@ss@tcp(db.example:3307)/k3s?charset=utf8", default)
    assert (m.user, m.password, m.host, m.port, m.database) == (
        "u",
        "p@ss",
        "db.example",
        3307,
        "k3s",
    )
    assert parse("mysql://u:p@tcp(db)/", default).database == "kubernetes"
    assert parse("mysql://u:p@tcp(db)/", default).port == 3306
    assert parse("mysql://", default).unix_socket == "/var/run/mysqld/mysqld.sock"
    p = parse("postgres://u:p@db:5433/MyDB?sslmode=disable", default)
    assert (p.host, p.port, p.database, p.params["sslmode"]) == ("db", 5433, "mydb", "disable")
    assert parse("postgresql://u:p@db/", default).database == "kubernetes"
    assert parse("postgres://", default).user == "postgres"
    with pytest.raises(EndpointError, match="endpoint should be a DSN URI"):
        parse("db.example:3306", default)
    with pytest.raises(EndpointError, match="default addr for network 'h:3306' unknown"):
        parse("mysql://u:p@h:3306/k3s", default)
    with pytest.raises(EndpointError, match="unknown driver"):
        parse("foo://bar", default)


def test_stopped_server_leaves_apiservers(k3s: Launcher, tmp_path: Path) -> None:
    endpoint = f"sqlite://{tmp_path / 'shared.db'}"
    n1, n2 = new_node(tmp_path, "s1"), new_node(tmp_path, "s2")
    s1 = k3s.start(
        n1.server_args("--token", "pw", "--datastore-endpoint", endpoint, ip="127.0.0.2"), n1.env
    )
    s1.wait_log("k3s is up and running")
    s2 = k3s.start(
        n2.server_args("--token", "pw", "--datastore-endpoint", endpoint, ip="127.0.0.3"), n2.env
    )
    s2.wait_log("k3s is up and running")
    url = f"https://127.0.0.2:{n1.port}/v1-k3s/apiservers"
    assert f"127.0.0.3:{n2.port}" in json.loads(get(url, auth=("node", "pw")).body)
    s2.signal()
    assert s2.wait_exit(15) == 0
    assert json.loads(get(url, auth=("node", "pw")).body) == [f"127.0.0.2:{n1.port}"]


def test_simultaneous_first_servers_share_one_ca(k3s: Launcher, tmp_path: Path, db: Db) -> None:
    """Since 2023-04 the first server locks the bootstrap key with an empty value; one started
    at the same time waits for the data instead of creating its own CA (storage.go)."""
    n1, n2 = new_node(tmp_path, "s1"), new_node(tmp_path, "s2")
    args = [
        n.server_args("--token", "pw", "--datastore-endpoint", db.endpoint, ip=ip)
        for n, ip in ((n1, "127.0.0.2"), (n2, "127.0.0.3"))
    ]
    window = {"K3S_FAKE_BOOTSTRAP_WINDOW": "2"}  # the lock is held while k3s starts up
    servers = [k3s.start(args[0], {**n1.env, **window}), k3s.start(args[1], {**n2.env, **window})]
    logs = ""
    for i, node in enumerate((n1, n2)):
        try:
            servers[i].wait_log("k3s is up and running", timeout=40)
        except AssertionError:
            # PostgreSQL: two kine creating the schema at once can collide in the catalog
            # (Corrections table); that k3s exits 1 and its supervisor starts it again.
            assert db.kind == "postgres" and "duplicate key value" in servers[i].log()
            logs += servers[i].log()
            servers[i] = k3s.start(args[i], node.env)
            servers[i].wait_log("k3s is up and running", timeout=40)
    logs += servers[0].log() + servers[1].log()
    assert logs.count("Bootstrap key locked for initial create") == 1
    restarted = "duplicate key value" in logs  # a restarted one may find the data at once
    assert restarted or "waiting for data to be populated by another server" in logs
    assert "Reconciling bootstrap data between datastore and disk" in logs
    ca1 = get(f"https://127.0.0.2:{n1.port}/cacerts").body
    ca2 = get(f"https://127.0.0.3:{n2.port}/cacerts").body
    assert ca1 == ca2


def test_a_dead_lock_holder_is_taken_over(k3s: Launcher, tmp_path: Path) -> None:
    """An empty (locked) bootstrap key left by a server that died is deleted after five polls
    and taken by the next server."""
    endpoint = f"sqlite://{tmp_path / 'shared.db'}"
    n1 = new_node(tmp_path, "s1")
    store = Store(parse(endpoint, ""))

    async def lock() -> None:
        await store.open(asyncio.Event())
        assert await store.create(bootstrap.key_for("pw"), b"")
        await store.close()

    asyncio.run(lock())
    s1 = k3s.start(n1.server_args("--token", "pw", "--datastore-endpoint", endpoint), n1.env)
    s1.wait_log("k3s is up and running", timeout=30)
    log = s1.log()
    assert "Bootstrap key is locked - waiting for data to be populated by another server" in log
    assert "Bootstrap key lock timed out - deleting lock and retrying" in log
    assert "Bootstrap key locked for initial create" in log


def test_old_k3s_simultaneous_first_servers_diverge(k3s: Launcher, tmp_path: Path) -> None:
    """Pre-2023 k3s (the K3S_FAKE_OLD_BOOTSTRAP knob): two servers with one token on an empty
    datastore both bootstrap (k3s #7185) and the loser keeps its own CA. k3snoded's bootstrap
    lease (D2) keeps such a k3s safe."""
    endpoint = f"sqlite://{tmp_path / 'shared.db'}"
    n1, n2 = new_node(tmp_path, "s1"), new_node(tmp_path, "s2")
    window = {"K3S_FAKE_BOOTSTRAP_WINDOW": "1", "K3S_FAKE_OLD_BOOTSTRAP": "1"}
    s1 = k3s.start(
        n1.server_args("--token", "pw", "--datastore-endpoint", endpoint, ip="127.0.0.2"),
        {**n1.env, **window},
    )
    s2 = k3s.start(
        n2.server_args("--token", "pw", "--datastore-endpoint", endpoint, ip="127.0.0.3"),
        {**n2.env, **window},
    )
    s1.wait_log("k3s is up and running")
    s2.wait_log("k3s is up and running")
    assert "bootstrap key already exists" in s1.log() + s2.log()
    ca1 = get(f"https://127.0.0.2:{n1.port}/cacerts").body
    ca2 = get(f"https://127.0.0.3:{n2.port}/cacerts").body
    assert ca1 != ca2
