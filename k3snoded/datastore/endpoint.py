"""k3s's ``--datastore-endpoint`` formats, parsed into a typed value the way kine reads them.

The same string is handed to k3s, so it is read exactly as kine and its drivers read it
(``reference/k3s-behaviour.md`` §1.2):

* empty, or ``sqlite://<path>``: the embedded SQLite (single server);
* ``mysql://<go-sql-driver DSN>``: ``user:pass@tcp(host:port)/db?params``; the ``tcp(...)``
  form is required; ``mysql://`` alone is ``root@unix(/var/run/mysqld/mysqld.sock)/`` (or
  ``root@tcp(127.0.0.1)/`` when TLS files are given); the database defaults to ``kubernetes``.
  As in go-sql-driver, the user and password are taken literally (no percent-decoding).
* ``postgres://`` / ``postgresql://``: a URL; user and password are percent-decoded; the database
  defaults to ``kubernetes`` and is lower-cased (kine does ``strings.ToLower(u.Path)``);
  ``postgres://`` alone is ``postgres://postgres:postgres@localhost/kubernetes``; if TLS files
  are given and the URL has no ``sslmode``, ``sslmode=verify-full`` (kine's rule).
* ``http(s)://a,https://b`` (and ``unix://``, ``unixs://``, ``etcd://``): etcd, recognised;
  ``nats://``, ``jetstream://``, ``litestream://``, ``t4://``: recognised. k3snoded cannot
  coordinate through those (``open_datastore`` says so).

Errors are ``EndpointError`` (a ``ValueError``); no message ever contains the password: use
``Endpoint.redacted()`` (also ``str()``) to show an endpoint.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from k3snoded.errors import K3snodedError

DEFAULT_DATABASE = "kubernetes"
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,19}")  # shown in messages only when it looks like one
MYSQL_PORT = 3306
POSTGRES_PORT = 5432
MYSQL_DEFAULT_SOCKET = "/var/run/mysqld/mysqld.sock"
_KINE_SYNTAX = (
    "invalid datastore endpoint; endpoint should be a DSN URI in the format <scheme>://<authority>"
)
# libpq connection parameters passed through from the URL query (pgx-only ones are dropped).
POSTGRES_PARAMS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "application_name",
        "options",
        "target_session_attrs",
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "channel_binding",
        "gssencmode",
    }
)


class EndpointError(K3snodedError, ValueError):
    """The endpoint cannot be used: bad syntax, unknown scheme, or not usable for coordination."""


class Backend(enum.Enum):
    SQLITE = "sqlite"
    MYSQL = "mysql"
    POSTGRES = "postgres"
    ETCD = "etcd"
    OTHER = "other"  # nats, jetstream, litestream, t4: kine drivers k3snoded does not speak


@dataclass(frozen=True)
class TlsFiles:
    """``--datastore-cafile/certfile/keyfile``."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    def __bool__(self) -> bool:
        return bool(self.ca or self.cert or self.key)


@dataclass(frozen=True)
class Endpoint:
    """One parsed datastore endpoint. ``password`` is kept out of ``repr``."""

    backend: Backend
    scheme: str
    host: str = ""  # "" with unix_socket set, or for SQLite / etcd
    port: int = 0
    unix_socket: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""
    path: str = ""  # the SQLite file ("" = the embedded default, chosen by the caller)
    params: tuple[tuple[str, str], ...] = ()
    urls: tuple[str, ...] = ()  # etcd members
    tls: TlsFiles = field(default_factory=TlsFiles)

    @property
    def address(self) -> str:
        """Where the server is, for messages: ``host:port``, the socket path, or the file."""
        if self.backend is Backend.SQLITE:
            return self.path or "(embedded sqlite)"
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        if self.urls:
            return ",".join(self.urls)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def param(self, name: str, default: str = "") -> str:
        for key, value in self.params:
            if key == name:
                return value
        return default

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every password the endpoint holds (user info, ``password=`` parameters): what a
        message must never show."""
        found = [self.password, *(v for k, v in self.params if k.lower() == "password")]
        return tuple(s for s in dict.fromkeys(found) if s)

    def with_database(self, database: str) -> Endpoint:
        """The same server and credentials, another database."""
        return _replace(self, database=database)

    def with_password(self, password: str) -> Endpoint:
        return _replace(self, password=password)

    def with_address(self, host: str, port: int) -> Endpoint:
        return _replace(self, host=host, port=port, unix_socket="")

    def with_path(self, path: str) -> Endpoint:
        return _replace(self, path=path)

    def mysql_ssl(self) -> dict[str, str]:
        """The TLS files as PyMySQL's ``ssl`` mapping (``ca``/``cert``/``key``); empty: no TLS."""
        return {
            k: v
            for k, v in (("ca", self.tls.ca), ("cert", self.tls.cert), ("key", self.tls.key))
            if v
        }

    def postgres_params(self) -> dict[str, str]:
        """libpq parameters from the query and the TLS files, with kine's ``verify-full`` rule."""
        out = {k: v for k, v in self.params if k in POSTGRES_PARAMS}
        for key, value in (
            ("sslrootcert", self.tls.ca),
            ("sslcert", self.tls.cert),
            ("sslkey", self.tls.key),
        ):
            if value:
                out[key] = value
        if self.tls and "sslmode" not in out:
            out["sslmode"] = "verify-full"
        return out

    def redacted(self) -> str:
        """The endpoint as text with the password replaced by ``***``."""
        if self.backend is Backend.SQLITE:
            return f"sqlite://{self.path}" if self.path else ""
        if self.backend in (Backend.ETCD, Backend.OTHER):
            return ",".join(self.urls) if self.urls else f"{self.scheme}://"
        auth = self.user + (":***" if self.password else "")
        shown = [(k, "***" if k.lower() == "password" else v) for k, v in self.params]
        query = urllib.parse.urlencode(shown, safe="*") if shown else ""
        query = f"?{query}" if query else ""
        if self.backend is Backend.MYSQL:
            net = f"unix({self.unix_socket})" if self.unix_socket else f"tcp({self.address})"
            return f"mysql://{auth}@{net}/{self.database}{query}"
        at = f"{urllib.parse.quote(self.user, safe='')}{':***' if self.password else ''}@"
        return f"{self.scheme}://{at if self.user else ''}{self.address}/{self.database}{query}"

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:  # the parameters may hold a password too
        return f"Endpoint({self.backend.value}, {self.redacted()!r})"


def _replace(ep: Endpoint, **changes: object) -> Endpoint:
    return dataclasses.replace(ep, **changes)  # type: ignore[arg-type]


def parse_endpoint(
    text: str,
    *,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> Endpoint:
    """Parse a k3s datastore endpoint; raise ``EndpointError`` (never naming the password)."""
    tls = TlsFiles(str(ca_file or ""), str(cert_file or ""), str(key_file or ""))
    if bool(tls.cert) != bool(tls.key):
        raise EndpointError("datastore cert file and key file must be given together")
    if text == "":
        return Endpoint(Backend.SQLITE, "sqlite", tls=tls)
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise EndpointError(_KINE_SYNTAX)
    if scheme == "sqlite":
        return _parse_sqlite(rest, tls)
    if scheme == "mysql":
        return _parse_mysql(rest, tls)
    if scheme in ("postgres", "postgresql"):
        return _parse_postgres(scheme, rest, tls)
    if scheme in ("http", "https", "unix", "unixs", "etcd"):
        urls = tuple(u for u in text.split(",") if u)
        return Endpoint(Backend.ETCD, scheme, urls=tuple(_strip_auth(u) for u in urls), tls=tls)
    if scheme in ("nats", "jetstream", "litestream", "t4"):
        return Endpoint(Backend.OTHER, scheme, tls=tls)
    shown = f" {scheme!r}" if _SCHEME.fullmatch(scheme) else ""
    raise EndpointError(f"unknown datastore driver{shown} in the endpoint")


def _strip_auth(url: str) -> str:
    scheme, _, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{tail}"


def _parse_sqlite(rest: str, tls: TlsFiles) -> Endpoint:
    path, _, query = rest.partition("?")
    return Endpoint(Backend.SQLITE, "sqlite", path=path, params=_query(query), tls=tls)


def _query(query: str) -> tuple[tuple[str, str], ...]:
    if not query:
        return ()
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise EndpointError("invalid parameters in the datastore endpoint") from None
    return tuple(pairs)


def _parse_mysql(dsn: str, tls: TlsFiles) -> Endpoint:
    """go-sql-driver ``ParseDSN``: ``[user[:password]@][net[(addr)]]/dbname[?params]``."""
    if dsn == "":
        dsn = "root@tcp(127.0.0.1)/" if tls else f"root@unix({MYSQL_DEFAULT_SOCKET})/"
    slash = dsn.rfind("/")
    if slash < 0:
        raise EndpointError("invalid MySQL endpoint: missing the slash before the database name")
    left, right = dsn[:slash], dsn[slash + 1 :]
    user = password = ""
    at = left.rfind("@")
    if at >= 0:
        user, _, password = left[:at].partition(":")
    netaddr = left[at + 1 :]
    net, paren, addr = netaddr.partition("(")
    if paren:
        if not addr.endswith(")"):
            raise EndpointError("invalid MySQL endpoint: address not closed with ')'")
        addr = addr[:-1]
    db, _, query = right.partition("?")
    try:
        db = urllib.parse.unquote(db, errors="strict")
    except UnicodeDecodeError:
        raise EndpointError("invalid MySQL endpoint: bad escape in the database name") from None
    ep = Endpoint(
        Backend.MYSQL,
        "mysql",
        user=user,
        password=password,
        database=db or DEFAULT_DATABASE,
        params=_query(query),
        tls=tls,
    )
    net = net or "tcp"
    if net == "unix":
        return _replace(ep, unix_socket=addr or "/tmp/mysql.sock")
    if net != "tcp":
        # go-sql-driver says "default addr for network 'host:3306' unknown"; the text is not
        # echoed here because a mistyped endpoint may have the password in that place.
        raise EndpointError(
            "invalid MySQL endpoint: default addr for network unknown "
            "(write the address as tcp(host:port), e.g. user:pass@tcp(10.0.0.5:3306)/k3s)"
        )
    host, port = _host_port(addr or "127.0.0.1", MYSQL_PORT)
    return _replace(ep, host=host, port=port)


def _host_port(addr: str, default_port: int) -> tuple[str, int]:
    if addr.startswith("["):
        host, bracket, tail = addr[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise EndpointError("invalid datastore endpoint: bad IPv6 address")
        port_text = tail[1:]
    elif addr.count(":") == 1:
        host, _, port_text = addr.partition(":")
    else:
        host, port_text = addr, ""
    if not host:
        raise EndpointError("invalid datastore endpoint: empty host")
    if not port_text:
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise EndpointError("invalid datastore endpoint: bad port")
    return host, int(port_text)


def _parse_postgres(scheme: str, rest: str, tls: TlsFiles) -> Endpoint:
    if rest == "":
        rest = "postgres:postgres@localhost/kubernetes"
    try:
        url = urllib.parse.urlsplit(f"postgres://{rest}")
        user = urllib.parse.unquote(url.username or "", errors="strict")
        password = urllib.parse.unquote(url.password or "", errors="strict")
        netloc = url.netloc.rpartition("@")[2]
    except (ValueError, UnicodeDecodeError):
        raise EndpointError("invalid PostgreSQL endpoint: cannot parse the URL") from None
    if "," in netloc:
        raise EndpointError("PostgreSQL endpoints with several hosts are not supported")
    host, port = _host_port(netloc or "localhost", POSTGRES_PORT)
    database = urllib.parse.unquote(url.path.lstrip("/")).lower() or DEFAULT_DATABASE
    params = _query(url.query)
    # pgx reads the password from a "password" parameter too; it wins over the user info.
    password = next((v for k, v in reversed(params) if k == "password"), password)
    return Endpoint(
        Backend.POSTGRES,
        scheme,
        host=host,
        port=port,
        user=user,
        password=password,
        database=database,
        params=params,
        tls=tls,
    )
