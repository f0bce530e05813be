"""``--datastore-endpoint`` grammar (kine pkg/drivers/factory.go and the per-driver DSNs)."""

from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass, field


class EndpointError(Exception):
    """An endpoint kine would refuse."""


SQLITE_PARAMS = (
    "_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL&_txlock=immediate"
    "&_stmt_cache_size=20&cache=shared"
)
KNOWN = ("sqlite", "litestream", "mysql", "postgres", "postgresql", "nats", "jetstream", "t4")
ETCD = ("http", "https", "unix", "unixs")


@dataclass(frozen=True)
class Endpoint:
    driver: str  # sqlite | mysql | postgres
    database: str = ""  # database name (mysql/postgres) or file path (sqlite)
    host: str = ""
    port: int = 0
    user: str = ""
    password: str = ""
    unix_socket: str = ""
    params: dict[str, str] = field(default_factory=dict)
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""

    @property
    def address(self) -> str:
        return self.unix_socket or f"{self.host}:{self.port}"


def _mysql(rest: str, tls: bool) -> Endpoint:
    """A go-sql-driver DSN: ``[user[:pass]@][net[(addr)]]/dbname[?params]``."""
    if rest == "":
        rest = "root@tcp(127.0.0.1)/" if tls else "root@unix(/var/run/mysqld/mysqld.sock)/"
    slash = rest.rfind("/")
    if slash < 0:
        raise EndpointError("invalid DSN: missing the slash separating the database name")
    head, tail = rest[:slash], rest[slash + 1 :]
    dbname, _, query = tail.partition("?")
    user = password = ""
    at = head.rfind("@")
    if at >= 0:
        creds, head = head[:at], head[at + 1 :]
        user, _, password = creds.partition(":")
    net, addr = "tcp", "127.0.0.1:3306"
    if head:
        if "(" in head:
            if not head.endswith(")"):
                raise EndpointError("invalid DSN: did you forget to escape a param value?")
            net, addr = head[: head.index("(")], head[head.index("(") + 1 : -1]
        else:
            net, addr = head, ""
        if net not in ("tcp", "tcp6", "unix"):
            if addr == "":
                raise EndpointError(f"default addr for network '{net}' unknown")
            raise EndpointError(f"unknown network {net}")
    params = dict(urllib.parse.parse_qsl(query))
    if net == "unix":
        return Endpoint(
            "mysql",
            dbname or "kubernetes",
            user=user or "root",
            password=password,
            unix_socket=addr or "/tmp/mysql.sock",
            params=params,
        )
    host, port = addr or "127.0.0.1", 3306
    if addr.startswith("["):
        host, _, p = addr[1:].partition("]")
        port = int(p[1:]) if p.startswith(":") else 3306
    elif addr.count(":") == 1:
        h, p = addr.split(":")
        host, port = h, int(p)
    return Endpoint(
        "mysql", dbname or "kubernetes", host, port, user or "root", password, params=params
    )


def _postgres(rest: str) -> Endpoint:
    if rest == "":
        rest = "postgres:postgres@localhost/"
    u = urllib.parse.urlsplit("postgres://" + rest)
    db = u.path.lstrip("/").lower() or "kubernetes"
    params = dict(urllib.parse.parse_qsl(u.query))
    return Endpoint(
        "postgres",
        db,
        u.hostname or "localhost",
        u.port or 5432,
        urllib.parse.unquote(u.username or "postgres"),
        urllib.parse.unquote(u.password or ""),
        params=params,
    )


def parse(
    text: str, default_sqlite: str, cafile: str = "", certfile: str = "", keyfile: str = ""
) -> Endpoint:
    """Parse an endpoint (empty → SQLite at ``default_sqlite``) and attach the TLS files."""
    ep = _parse(text, default_sqlite, bool(cafile or certfile))
    return dataclasses.replace(ep, cafile=cafile, certfile=certfile, keyfile=keyfile)


def _parse(text: str, default_sqlite: str, tls: bool) -> Endpoint:
    if text == "":
        return Endpoint("sqlite", default_sqlite)
    if "://" not in text:
        raise EndpointError(
            "invalid datastore endpoint; endpoint should be a DSN URI in the format "
            "<scheme>://<authority>"
        )
    scheme, rest = text.split("://", 1)
    if scheme == "sqlite":
        path, _, _query = rest.partition("?")
        return Endpoint("sqlite", path or default_sqlite)
    if scheme == "mysql":
        return _mysql(rest, tls)
    if scheme in ("postgres", "postgresql"):
        return _postgres(rest)
    if scheme in KNOWN or scheme in ETCD or scheme == "etcd":
        raise EndpointError(f"datastore driver {scheme} is not emulated by the stand-in k3s")
    raise EndpointError(f"unknown driver {scheme}")
