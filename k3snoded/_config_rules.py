"""Pure checks of single config values. Each returns ``None`` when fine, else the reason.

Private to ``k3snoded.config``. The datastore endpoint grammar follows k3s/kine
(``pkg/drivers/factory.go``, go-sql-driver's DSN, pgx URLs); names follow Kubernetes
(RFC 1123 node names, label and taint syntax).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

SQLITE = "sqlite"
SUPPORTED_SCHEMES = ("sqlite", "mysql", "postgres", "postgresql", "http", "https", "nats")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
MYSQL_NETWORKS = ("tcp", "tcp4", "tcp6", "unix")

_DNS_LABEL = r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?$")
_RFC1123_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_RFC1123_SUBDOMAIN = re.compile(rf"^{_RFC1123_LABEL}(?:\.{_RFC1123_LABEL})*$")
_CLUSTER_NAME = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_MYSQL_ADDR = re.compile(r"^(\w+)\((.*)\)$")

# k3s flags whose value k3snoded computes itself, and the config key that feeds each one.
OWNED_K3S_FLAGS = {
    "token": "cluster.token_file",
    "t": "cluster.token_file",
    "token-file": "cluster.token_file",
    "datastore-endpoint": "datastore.endpoint",
    "datastore-cafile": "datastore.ca_file",
    "datastore-certfile": "datastore.cert_file",
    "datastore-keyfile": "datastore.key_file",
    "server": "registration.address",
    "s": "registration.address",
    "node-name": "node.name",
    "data-dir": "k3s.data_dir",
    "d": "k3s.data_dir",
}


def did_you_mean(key: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid key, or ``""``."""
    options = list(choices)
    folded = {c.replace("_", "").lower(): c for c in options}
    exact = folded.get(key.replace("-", "").replace("_", "").lower())
    match = [exact] if exact else difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def is_dns_name(text: str) -> bool:
    """A syntactically valid host name (not an IP-looking string such as ``10.0.0``)."""
    if not text or len(text.rstrip(".")) > 253 or not _DNS_NAME.match(text):
        return False
    return not text.rstrip(".").rsplit(".", 1)[-1].isdigit()


def check_host(text: str) -> str | None:
    """An IP address or a DNS name."""
    if is_ip(text) or is_dns_name(text):
        return None
    return f"'{text}' is neither an IP address nor a valid DNS name"


def check_interface(name: str) -> str | None:
    """A Linux interface name: 1-15 bytes, no whitespace or '/'."""
    if len(name.encode()) > 15 or any(ch.isspace() or ch == "/" for ch in name):
        return f"'{name}' is not a network interface name (at most 15 characters, no '/' or spaces)"
    return None


def check_node_name(name: str) -> str | None:
    if len(name) > 253 or not _RFC1123_SUBDOMAIN.match(name):
        return (
            f"'{name}' is not a valid Kubernetes node name (lower-case RFC 1123: letters, "
            "digits, '-' and '.', starting and ending with a letter or digit, at most 253)"
        )
    return None


def check_cluster_name(name: str) -> str | None:
    if not _CLUSTER_NAME.match(name):
        return (
            f"'{name}' is not a valid cluster name (lower-case letters, digits and '-', "
            "1 to 63 characters, starting and ending with a letter or digit)"
        )
    return None


def _check_label_key(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _RFC1123_SUBDOMAIN.match(prefix)):
        return f"the key prefix '{prefix}' is not a lower-case DNS subdomain"
    if len(name) > 63 or not _LABEL_NAME.match(name):
        return f"the key name '{name}' must be 1-63 letters, digits, '-', '_' or '.'"
    return None


def _check_label_value(value: str) -> str | None:
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return f"the value '{value}' must be at most 63 letters, digits, '-', '_' or '.'"
    return None


def check_label(label: str) -> str | None:
    """``key=value`` as ``--node-label`` takes it."""
    key, eq, value = label.partition("=")
    if not eq:
        return f"'{label}' is not of the form key=value"
    reason = _check_label_key(key) or _check_label_value(value)
    return f"'{label}': {reason}" if reason else None


def check_taint(taint: str) -> str | None:
    """``key=value:Effect`` (or ``key:Effect``) as ``--node-taint`` takes it."""
    head, colon, effect = taint.rpartition(":")
    if not colon:
        return f"'{taint}' is not of the form key=value:Effect"
    if effect not in TAINT_EFFECTS:
        return f"'{taint}': the effect must be one of {', '.join(TAINT_EFFECTS)}, not '{effect}'"
    key, _eq, value = head.partition("=")
    reason = _check_label_key(key) or _check_label_value(value)
    return f"'{taint}': {reason}" if reason else None


def check_port(text: str) -> str | None:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        return f"the port '{text}' is not a number from 1 to 65535"
    return None


def check_listen(text: str) -> str | None:
    """``host:port``, ``:port`` or ``[v6]:port``; ``""`` (disabled) is checked by the caller."""
    host, colon, port = text.rpartition(":")
    if not colon:
        return f"'{text}' is not of the form host:port (e.g. 0.0.0.0:6480)"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not is_ip(host) or ":" not in host:
            return f"'[{host}]' is not an IPv6 address"
    elif host and not (is_ipv4(host) or is_dns_name(host)):
        return f"the host '{host}' is neither an IPv4 address, [IPv6] nor a host name"
    return check_port(port)


def check_seed(seed: str) -> str | None:
    """``host``, ``host:port``, ``[v6]:port`` or ``http(s)://host[:port][/path]``."""
    if "://" in seed:
        try:
            parts = urlsplit(seed)
            _ = parts.port
        except ValueError as exc:
            return f"'{seed}' is not a valid URL: {exc}"
        if parts.scheme not in ("http", "https"):
            return f"'{seed}': the scheme must be http or https"
        if not parts.hostname:
            return f"'{seed}' has no host"
        return check_host(parts.hostname)
    if seed.startswith("["):
        return None if check_listen(seed) is None else f"'{seed}' is not [IPv6]:port"
    host, colon, port = seed.partition(":")
    return check_host(host) or (check_port(port) if colon else None)


def check_san(san: str) -> str | None:
    """A ``--tls-san`` entry: an IP address or a DNS name (a leading ``*.`` is allowed)."""
    name = san[2:] if san.startswith("*.") else san
    if is_ip(san) or is_dns_name(name):
        return None
    return f"'{san}' is neither an IP address nor a valid DNS name"


def check_k3s_arg(arg: str) -> str | None:
    """One element of ``k3s.server_args``/``agent_args``."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    name = arg.lstrip("-").split("=", 1)[0]
    if " " in name:
        return (
            f"'{arg}' is a flag and its value in one list item; k3s would fail with "
            f"'flag provided but not defined: -{name}' (write '{arg.replace(' ', '=', 1)}' "
            "or two list items)"
        )
    if name in OWNED_K3S_FLAGS:
        return (
            f"'-{'-' if len(name) > 1 else ''}{name}' is set by k3snoded itself; "
            f"configure {OWNED_K3S_FLAGS[name]} instead"
        )
    return None


def check_endpoint(endpoint: str) -> str | None:
    """A k3s ``--datastore-endpoint`` as k3s/kine would parse it; ``""`` means SQLite."""
    if endpoint in ("", SQLITE):
        return None
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return (
            "invalid datastore endpoint; endpoint should be a DSN URI in the format "
            "<scheme>://<authority> (k3s's own error), e.g. mysql://user:pass@tcp(db:3306)/k3s"
        )
    if scheme not in SUPPORTED_SCHEMES:
        return f"unknown driver '{scheme}'; supported: {', '.join(SUPPORTED_SCHEMES)}"
    if scheme == "mysql":
        return _check_mysql(rest)
    if scheme in ("postgres", "postgresql"):
        return _check_url(endpoint, need_host=True)
    if scheme in ("http", "https"):
        for member in endpoint.split(","):
            if not member.startswith(("http://", "https://")):
                return f"etcd endpoint '{member}' must start with http:// or https://"
            reason = _check_url(member, need_host=True)
            if reason:
                return reason
        return None
    if scheme == "nats":
        return _check_url(endpoint, need_host=False)
    return None


def _check_url(url: str, *, need_host: bool) -> str | None:
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        return f"'{hide_password(url)}' is not a valid URL: {exc}"
    if need_host and not parts.hostname:
        return f"'{hide_password(url)}' has no host"
    return None


def _check_mysql(dsn: str) -> str | None:
    """go-sql-driver DSN: ``[user[:password]@][net[(addr)]]/dbname[?params]``."""
    example = "mysql://user:pass@tcp(db.example.internal:3306)/k3s"
    if not dsn:
        return None  # kine: root@unix(/var/run/mysqld/mysqld.sock)/
    slash = dsn.rfind("/")
    if slash < 0:
        return f"invalid DSN: missing the slash separating the database name (e.g. {example})"
    head = dsn[:slash]  # kine passes the query (tls=..., etc.) to the driver as it is
    address = head[head.rfind("@") + 1 :]
    match = _MYSQL_ADDR.match(address)
    if address and not match and address not in MYSQL_NETWORKS:
        hint = address if ":" in address else f"{address}:3306"
        return (
            f"k3s fails on this endpoint with \"default addr for network '{address}' unknown\": "
            f"the address must be wrapped as tcp(...), e.g. tcp({hint})"
        )
    if match and match.group(1) not in MYSQL_NETWORKS:
        return f"unknown network '{match.group(1)}'; use tcp(host:port) or unix(/path.sock)"
    return None


def hide_password(endpoint: str) -> str:
    """``endpoint`` with the password of ``scheme://user:password@...`` and of a ``password=``
    query parameter (pgx reads one there too) replaced by ``***``."""
    endpoint = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", endpoint)
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", endpoint)
