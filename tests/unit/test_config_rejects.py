"""Each invalid setting is rejected with the file, the dotted key and a recognisable reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from k3snoded.config import HostFacts, Interface
from tests.unit.test_config_support import ConfigDir, deep_merge, find

# (overlay on the valid fleet config, dotted key, fragment of the reason)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("count 0", {"servers": {"count": 0}}, "servers.count", "at least 1"),
    ("count bool", {"servers": {"count": True}}, "servers.count", "whole number"),
    ("count str", {"servers": {"count": "3"}}, "servers.count", "whole number"),
    ("dedicated int", {"servers": {"dedicated": 1}}, "servers.dedicated", "true or false"),
    (
        "sqlite with 3 servers",
        {"datastore": {"endpoint": "sqlite"}},
        "datastore.endpoint",
        "SQLite cannot coordinate machines",
    ),
    (
        "sqlite url with 3 servers",
        {"datastore": {"endpoint": "sqlite:///var/lib/x.db"}},
        "datastore.endpoint",
        "SQLite cannot coordinate",
    ),
    (
        "server without datastore",
        {"datastore": {"endpoint": ""}, "node": {"role": "server"}},
        "node.role",
        "needs the shared datastore",
    ),
    (
        "server pinned, no shared datastore, a registration address (a VIP)",
        {"datastore": {"endpoint": ""}, "node": {"role": "server"}, "servers": {"count": 1}},
        "node.role",
        "joins it as an agent",
    ),
    (
        "vip enabled explicitly without an address",
        {"registration": {"address": "", "vip": {"enabled": True}}},
        "registration.vip.enabled",
        "no address to hold",
    ),
    (
        "single sqlite server with a vip it would never hold",
        {
            "datastore": {"endpoint": "sqlite:///var/lib/k3snoded/x.db"},
            "servers": {"count": 1},
        },
        "registration.vip.enabled",
        "never holds the VIP",
    ),
    (
        "auto without datastore nor address",
        {"datastore": {"endpoint": ""}, "registration": {"address": ""}},
        "servers.count",
        "SQLite cannot coordinate",
    ),
    ("endpoint no scheme", {"datastore": {"endpoint": "db:3306"}}, "datastore.endpoint", "://"),
    (
        "mysql without tcp()",
        {"datastore": {"endpoint": "mysql://u:p@db.example:3306/k3s"}},
        "datastore.endpoint",
        "default addr for network 'db.example:3306' unknown",
    ),
    (
        "mysql without slash",
        {"datastore": {"endpoint": "mysql://u:p@tcp(db:3306)"}},
        "datastore.endpoint",
        "slash",
    ),
    (
        "mysql bad network",
        {"datastore": {"endpoint": "mysql://u:p@udp(db:3306)/k3s"}},
        "datastore.endpoint",
        "unknown network 'udp'",
    ),
    (
        "unknown scheme",
        {"datastore": {"endpoint": "mongodb://db/k3s"}},
        "datastore.endpoint",
        "unknown driver 'mongodb'",
    ),
    (
        "postgres no host",
        {"datastore": {"endpoint": "postgres:///k3s"}},
        "datastore.endpoint",
        "no host",
    ),
    (
        "postgres bad port",
        {"datastore": {"endpoint": "postgres://u:p@db:99999/k3s"}},
        "datastore.endpoint",
        "not a valid URL",
    ),
    (
        "etcd member without scheme",
        {"datastore": {"endpoint": "https://e1:2379,e2:2379"}},
        "datastore.endpoint",
        "must start with http:// or https://",
    ),
    (
        "cert without key",
        {"datastore": {"cert_file": "/etc/hosts"}},
        "datastore.cert_file",
        "datastore.key_file is not",
    ),
    (
        "key without cert",
        {"datastore": {"key_file": "/etc/hosts"}},
        "datastore.key_file",
        "datastore.cert_file is not",
    ),
    (
        "ca file missing",
        {"datastore": {"ca_file": "/nonexistent/ca.pem"}},
        "datastore.ca_file",
        "does not exist",
    ),
    ("ca file is a dir", {"datastore": {"ca_file": "/etc"}}, "datastore.ca_file", "regular file"),
    ("relative path", {"k3s": {"binary": "k3s"}}, "k3s.binary", "absolute path"),
    ("path not str", {"k3s": {"data_dir": 5}}, "k3s.data_dir", "a path"),
    (
        "lease too short",
        {"coordination": {"lease_ttl": 5}},
        "coordination.lease_ttl",
        "renew_interval + 2 * retry_timeout",
    ),
    (
        "dead before lease",
        {"coordination": {"dead_after": 5}},
        "coordination.dead_after",
        "at least lease_ttl",
    ),
    (
        "zero renew",
        {"coordination": {"renew_interval": 0}},
        "coordination.renew_interval",
        "greater than 0",
    ),
    ("ready timeout", {"k3s": {"ready_timeout": -1}}, "k3s.ready_timeout", "greater than 0"),
    ("float as str", {"k3s": {"stop_timeout": "30s"}}, "k3s.stop_timeout", "number of seconds"),
    ("nan", {"k3s": {"stop_timeout": float("nan")}}, "k3s.stop_timeout", "number of seconds"),
    (
        "address garbage",
        {"registration": {"address": "not a host!"}},
        "registration.address",
        "neither an IP address nor a valid DNS name",
    ),
    (
        "address looks like a bad IP",
        {"registration": {"address": "10.0.0.300"}},
        "registration.address",
        "neither an IP address",
    ),
    (
        "vip on a DNS name",
        {"registration": {"address": "lb.example.com"}},
        "registration.address",
        "a VIP must be an IPv4 address",
    ),
    (
        "vip on IPv6",
        {"registration": {"address": "fd00::100"}},
        "registration.address",
        "not an IPv4 address",
    ),
    (
        "vip is the node's address",
        {"registration": {"address": "10.0.0.11"}},
        "registration.address",
        "this node's own address",
    ),
    (
        "prefix 0",
        {"registration": {"vip": {"prefix": 0}}},
        "registration.vip.prefix",
        "from 1 to 32",
    ),
    (
        "prefix 33",
        {"registration": {"vip": {"prefix": 33}}},
        "registration.vip.prefix",
        "from 1 to 32",
    ),
    ("vrid 0", {"registration": {"vip": {"vrid": 0}}}, "registration.vip.vrid", "from 1 to 255"),
    (
        "vrid 256",
        {"registration": {"vip": {"vrid": 256}}},
        "registration.vip.vrid",
        "from 1 to 255",
    ),
    (
        "priority 255",
        {"registration": {"vip": {"priority": 255}}},
        "registration.vip.priority",
        "from 1 to 254",
    ),
    (
        "priority 0",
        {"registration": {"vip": {"priority": 0}}},
        "registration.vip.priority",
        "from 1 to 254",
    ),
    (
        "advert too small",
        {"registration": {"vip": {"advert_interval": 0.005}}},
        "registration.vip.advert_interval",
        "from 0.01 to 40.95",
    ),
    (
        "advert too large",
        {"registration": {"vip": {"advert_interval": 41}}},
        "registration.vip.advert_interval",
        "from 0.01 to 40.95",
    ),
    (
        "advert not centiseconds",
        {"registration": {"vip": {"advert_interval": 0.015}}},
        "registration.vip.advert_interval",
        "multiple of 0.01",
    ),
    (
        "vrid bool",
        {"registration": {"vip": {"vrid": False}}},
        "registration.vip.vrid",
        "whole number, not a boolean",
    ),
    (
        "unicast peer v6",
        {"registration": {"vip": {"unicast_peers": ["10.0.0.12", "fe80::1"]}}},
        "registration.vip.unicast_peers[1]",
        "not an IPv4 address",
    ),
    (
        "tls san",
        {"registration": {"tls_san": ["ok.example", "bad name"]}},
        "registration.tls_san[1]",
        "neither an IP",
    ),
    ("listen without port", {"api": {"listen": "6480"}}, "api.listen", "host:port"),
    ("listen port 0", {"api": {"listen": "0.0.0.0:0"}}, "api.listen", "1 to 65535"),
    ("listen port big", {"api": {"listen": ":65536"}}, "api.listen", "1 to 65535"),
    ("listen bad v6", {"api": {"listen": "[10.0.0.1]:80"}}, "api.listen", "IPv6"),
    (
        "interface name",
        {"node": {"interface": "a-very-long-interface-name"}},
        "node.interface",
        "network interface name",
    ),
    (
        "vip interface name",
        {"registration": {"vip": {"interface": "eth 0"}}},
        "registration.vip.interface",
        "network interface name",
    ),
    ("node name", {"node": {"name": "Node_1"}}, "node.name", "valid Kubernetes node name"),
    ("node address", {"node": {"address": "nope"}}, "node.address", "not an IP address"),
    ("role", {"node": {"role": "master"}}, "node.role", "one of auto, server, agent"),
    (
        "agent without address",
        {
            "node": {"role": "agent"},
            "registration": {"address": ""},
            "discovery": {"mdns": False},
        },
        "node.role",
        "cannot be learned from peers",
    ),
    ("label form", {"node": {"labels": ["novalue"]}}, "node.labels[0]", "key=value"),
    ("label value", {"node": {"labels": ["a=b", "k=bad value"]}}, "node.labels[1]", "value"),
    ("labels not list", {"node": {"labels": "a=b"}}, "node.labels", "write it as a list"),
    ("label not str", {"node": {"labels": [1]}}, "node.labels[0]", "must be a string"),
    ("taint effect", {"node": {"taints": ["k=v:Sometimes"]}}, "node.taints[0]", "NoSchedule"),
    ("taint form", {"node": {"taints": ["k=v"]}}, "node.taints[0]", "key=value:Effect"),
    ("cluster name", {"cluster": {"name": "Prod_1"}}, "cluster.name", "cluster name"),
    ("cluster name yes", {"cluster": {"name": True}}, "cluster.name", "quote the value"),
    (
        "server arg token",
        {"k3s": {"server_args": ["--token=abc"]}},
        "k3s.server_args[0]",
        "set by k3snoded itself; configure cluster.token_file",
    ),
    (
        "server arg -t",
        {"k3s": {"server_args": ["--disable=traefik", "-t", "abc"]}},
        "k3s.server_args[1]",
        "cluster.token_file",
    ),
    (
        "server arg token-file",
        {"k3s": {"server_args": ["--token-file=/x"]}},
        "k3s.server_args[0]",
        "cluster.token_file",
    ),
    (
        "server arg datastore",
        {"k3s": {"server_args": ["--datastore-endpoint", "mysql://x"]}},
        "k3s.server_args[0]",
        "datastore.endpoint",
    ),
    (
        "agent arg server",
        {"k3s": {"agent_args": ["--server=https://x:6443"]}},
        "k3s.agent_args[0]",
        "registration.address",
    ),
    (
        "glued flag and value",
        {"k3s": {"agent_args": ["--node-label foo=bar"]}},
        "k3s.agent_args[0]",
        "flag provided but not defined: -node-label foo",
    ),
    ("args not list", {"k3s": {"server_args": "--x"}}, "k3s.server_args", "list"),
    ("seed", {"discovery": {"seeds": ["http://"]}}, "discovery.seeds[0]", "no host"),
    ("seed port", {"discovery": {"seeds": ["h.example:0"]}}, "discovery.seeds[0]", "port"),
    ("mdns str", {"discovery": {"mdns": "yes"}}, "discovery.mdns", "true or false"),
    ("unknown section", {"registraton": {}}, "registraton", "did you mean 'registration'?"),
    (
        "unknown nested",
        {"registration": {"vip": {"vird": 5}}},
        "registration.vip.vird",
        "did you mean 'vrid'?",
    ),
    (
        "unknown spelled with dash",
        {"cluster": {"token-file": "/x"}},
        "cluster.token-file",
        "did you mean 'token_file'?",
    ),
    ("source is not a key", {"source": "/x"}, "source", "unknown key"),
    ("section not mapping", {"servers": 3}, "servers", "must be a mapping"),
]


@pytest.mark.parametrize(
    ("overlay", "key", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rejected(tmp_path: Path, overlay: dict[str, Any], key: str, reason: str) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), overlay))
    problem = find(d.problems(), key)
    assert problem.file == str(d.main)
    assert reason in problem.reason


def _token_case(d: ConfigDir, case: str) -> None:
    if case == "missing":
        d.token.unlink()
    elif case == "empty":
        d.token.write_text("\n")
    elif case == "group-readable":
        d.token.chmod(0o640)
    elif case == "world-readable":
        d.token.chmod(0o604)
    elif case == "directory":
        d.token.unlink()
        d.token.mkdir()
    elif case == "malformed":
        d.token.write_text("K10abc::server:pw\n")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "does not exist; create it with `k3snoded token generate"),
        ("empty", "is empty"),
        ("group-readable", "readable by group or others (mode 0640)"),
        ("world-readable", "chmod 600"),
        ("directory", "not a regular file"),
        ("malformed", "invalid token CA hash length"),
    ],
)
def test_token_file_rejected(tmp_path: Path, case: str, reason: str) -> None:
    d = ConfigDir(tmp_path)
    d.write(d.fleet())
    _token_case(d, case)
    problem = find(d.problems(), "cluster.token_file")
    assert problem.file == str(d.main)
    assert reason in problem.reason
    assert "0123456789abcdef" not in str(problem)  # never the token itself


def test_endpoint_password_never_in_problems(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), {"datastore": {"endpoint": "postgres://u:s3cr3t@:99/k3s"}}))
    problem = find(d.problems(), "datastore.endpoint")
    assert "s3cr3t" not in problem.reason


def test_mysql_hint_suggests_tcp(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), {"datastore": {"endpoint": "mysql://u:p@db/k3s"}}))
    assert "tcp(db:3306)" in find(d.problems(), "datastore.endpoint").reason


def test_undetectable_address_and_interface(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(d.fleet())
    problems = d.problems(HostFacts(hostname="n1"))
    assert "set node.address" in find(problems, "node.address").reason
    assert "set it" in find(problems, "registration.vip.interface").reason


def test_undetectable_host_name(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(d.fleet())
    host = HostFacts(interfaces=(Interface("eth0", up=True, loopback=False, ipv4="10.0.0.11"),))
    assert "set node.name" in find(d.problems(host), "node.name").reason


def test_invalid_detected_host_name_says_to_set_it(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(d.fleet())
    host = HostFacts(hostname="my_box", default_route_interface="eth0")
    reason = find(d.problems(host), "node.name").reason
    assert "'my_box'" in reason and "defaults to the host name" in reason


def test_type_error_is_not_reported_twice(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), {"registration": {"vip": {"vrid": "51"}}}))
    problems = d.problems()
    assert [p.key for p in problems] == ["registration.vip.vrid"]


def test_upgrade_settings_and_the_release_name_are_checked(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    cfg = d.fleet()
    cfg["k3s"] = {"version": "v1.31"}
    cfg["upgrade"] = {"agent_batch": 0, "drain_timeout": -1, "stable_for": -2}
    d.write(cfg)
    keys = {p.key for p in d.problems()}
    assert {
        "k3s.version",
        "upgrade.agent_batch",
        "upgrade.drain_timeout",
        "upgrade.stable_for",
    } <= keys
