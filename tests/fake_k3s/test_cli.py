"""CLI contract (§4.1, §4.2, §6.5): version, urfave-style parsing, validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fake_k3s.harness import Launcher, new_node
from tests.fakes.k3s_stub import flags


def test_version(k3s: Launcher) -> None:
    rc, out, _ = k3s.run(["--version"])
    assert rc == 0
    assert out == "k3s version v1.31.4+k3s1 (fakefake)\ngo version go1.22.9\n"


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["server", "--bogus", "x"], "-bogus"),
        (["agent", "-x"], "-x"),
        (["server", "--server https://10.0.0.1:6443"], "-server https://10.0.0.1:6443"),
        (["server", "--nope=1"], "-nope"),
    ],
)
def test_unknown_flag(k3s: Launcher, argv: list[str], name: str) -> None:
    rc, out, err = k3s.run(argv)
    assert rc == 1
    assert out.startswith(f"Incorrect Usage: flag provided but not defined: {name}\n")
    assert "level=fatal" in err
    assert f"flag provided but not defined: {name}" in err


def _parse(argv: list[str], env: dict[str, str] | None = None) -> flags.Args:
    return flags.parse(argv, flags.SERVER_FLAGS, env or {})


def test_flag_forms() -> None:
    a = _parse(["--token", "a", "-d=/x", "--tls-san=a,b", "--tls-san", "c", "-i", "1.2.3.4,::1"])
    assert a.get_str("token") == "a"
    assert a.get_str("data-dir") == "/x"
    assert a.get_list("tls-san") == ["a", "b", "c"]
    assert a.get_list("node-ip") == ["1.2.3.4", "::1"]
    a = _parse(["-t", "x", "-s", "https://h:6443", "-o", "/k", "-c", "/c", "--disable=traefik,x"])
    assert (a.get_str("token"), a.get_str("server")) == ("x", "https://h:6443")
    assert (a.get_str("write-kubeconfig"), a.get_str("config")) == ("/k", "/c")
    assert a.get_list("disable") == ["traefik", "x"]


def test_node_labels_are_not_comma_split() -> None:
    a = _parse(["--node-label", "a=b,c", "--node-label", "d=e"])
    assert a.get_list("node-label") == ["a=b,c", "d=e"]


def test_bools() -> None:
    a = _parse(["--cluster-init", "--tls-san-security=false"])
    assert a.get_bool("cluster-init") is True
    assert a.get_bool("tls-san-security") is False
    assert _parse([]).get_bool("tls-san-security") is True
    # A bool never takes the next argument: parsing stops at the first non-flag, like Go's flag.
    a = _parse(["--cluster-init", "false", "--token", "x"])
    assert a.get_str("token") == ""
    assert a.positional == ["false", "--token", "x"]
    with pytest.raises(flags.UsageError, match='invalid boolean value "maybe" for -debug'):
        _parse(["--debug=maybe"])


def test_missing_value_and_bad_int() -> None:
    with pytest.raises(flags.UsageError, match="flag needs an argument: -token"):
        _parse(["--token"])
    with pytest.raises(flags.UsageError, match='invalid value "x" for flag -https-listen-port'):
        _parse(["--https-listen-port", "x"])


def test_env_fallback_and_flag_precedence() -> None:
    env = {"K3S_TOKEN": "envtok", "K3S_DATASTORE_ENDPOINT": "mysql://x", "K3S_URL": "https://u"}
    a = _parse([], env)
    assert a.get_str("token") == "envtok"
    assert a.get_str("datastore-endpoint") == "mysql://x"
    assert a.get_str("server") == "https://u"
    assert _parse(["--token", "cli"], env).get_str("token") == "cli"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["agent"], "--token is required"),
        (["agent", "--token", "x"], "--server is required"),
        (
            ["agent", "--token", "x", "--server", "http://10.0.0.1:6443"],
            "only https:// URLs are supported, invalid scheme: http://10.0.0.1:6443",
        ),
        (
            ["server", "--disable-etcd", "--datastore-endpoint", "mysql://u:p@tcp(h:3306)/k"],
            "invalid flag use; cannot use --disable-etcd with --datastore-endpoint",
        ),
        (
            ["server", "--disable-apiserver", "--datastore-endpoint", "postgres://h/k"],
            "invalid flag use; cannot use --disable-apiserver with --datastore-endpoint",
        ),
        (
            ["server", "--disable-etcd"],
            "invalid flag use; --server is required with --disable-etcd",
        ),
        (
            ["server", "--cluster-reset-restore-path", "/x"],
            "invalid flag use; --cluster-reset required with --cluster-reset-restore-path",
        ),
        (["server", "--cluster-cidr", "10.42.0.0/33"], "invalid cluster-cidr 10.42.0.0/33"),
        (["server", "--service-cidr", "nope"], "invalid service-cidr nope"),
        (["server", "--cluster-dns", "10.43.0.x"], "invalid cluster-dns address 10.43.0.x"),
        (["server", "--service-node-port-range", "3-x"], "invalid port range 3-x"),
        (["server", "--egress-selector-mode", "x"], "invalid egress-selector-mode x"),
    ],
)
def test_validation_errors(k3s: Launcher, tmp_path: Path, argv: list[str], message: str) -> None:
    node = new_node(tmp_path, "n")
    rc, _, err = k3s.run(argv, node.env)
    assert rc == 1
    assert "level=fatal" in err
    assert message in err


def test_agent_env_fallbacks(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "n")
    rc, _, err = k3s.run(["agent"], {**node.env, "K3S_TOKEN": "x", "K3S_URL": "http://h:1"})
    assert rc == 1
    assert "only https:// URLs are supported, invalid scheme: http://h:1" in err
