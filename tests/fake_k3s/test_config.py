"""Config file contract (§4.3, §4.4): config.yaml, drop-ins, `+`, CLI precedence, env."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from tests.fake_k3s.client import peer_cert
from tests.fake_k3s.harness import Launcher, new_node
from tests.fakes.k3s_stub import configfile, flags


def _args(argv: list[str], env: dict[str, str]) -> flags.Args:
    extra = configfile.config_args(argv, flags.SERVER_FLAGS, env)
    return flags.parse([*extra, *argv], flags.SERVER_FLAGS, env)


def test_dropins_append_and_override(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("token: a\ntls-san: [x]\nnode-label: [k=v]\ndebug: true\nnode-name: one\n")
    d = tmp_path / "config.yaml.d"
    d.mkdir()
    (d / "20-b.yml").write_text("node-name: three\nnode-label+: [k3=v3]\n")
    (d / "10-a.yaml").write_text("tls-san+: [y]\nnode-name: two\nnode-label: [k2=v2]\n")
    (d / "30-ignored.txt").write_text("token: nope\n")
    a = _args(["-c", str(cfg)], {})
    assert a.get_str("token") == "a"
    assert a.get_list("tls-san") == ["x", "y"]
    assert a.get_list("node-label") == ["k2=v2", "k3=v3"]
    assert a.get_bool("debug") is True
    assert a.get_str("node-name") == "three"


def test_cli_wins_even_for_slices(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("token: a\nnode-label: [from=config]\ntls-san: [x]\n")
    a = _args(["--config", str(cfg), "--token", "b", "--node-label", "from=cli"], {})
    assert a.get_str("token") == "b"
    assert a.get_list("node-label") == ["from=cli"]
    assert a.get_list("tls-san") == ["x"]


def test_env_config_file_wins_over_flag(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("token: from-a\n")
    (tmp_path / "b.yaml").write_text("token: from-b\n")
    env = {"K3S_CONFIG_FILE": str(tmp_path / "b.yaml")}
    assert _args(["-c", str(tmp_path / "a.yaml")], env).get_str("token") == "from-b"


def test_default_location_is_under_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K3S_FAKE_ROOT", str(tmp_path))
    cfg = tmp_path / "etc/rancher/k3s/config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("token: rooted\n")
    assert _args([], {}).get_str("token") == "rooted"
    cfg.unlink()
    assert _args([], {}).get_str("token") == ""  # absent default file: no config, no error


def test_server_from_config_file(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    cfg = node.root / "etc/rancher/k3s/config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(
        f"token: cfgpw\nhttps-listen-port: {node.port}\ntls-san: [cfg.example]\n"
        "node-ip: 127.0.0.1\nbind-address: 127.0.0.1\nnode-name: s1\nbogus-key: 1\n"
    )
    drop = node.root / "etc/rancher/k3s/config.yaml.d"
    drop.mkdir()
    (drop / "50-more.yaml").write_text("tls-san+: [more.example]\nwrite-kubeconfig-mode: '0644'\n")
    s = k3s.start(["server"], node.env)
    s.wait_log("k3s is up and running")
    assert "Unknown flag --bogus-key found in config.yaml, skipping" in s.log()
    assert (node.server_dir / "token").read_text().strip().endswith("::server:cfgpw")
    cert = x509.load_der_x509_certificate(peer_cert("127.0.0.1", node.port))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"cfg.example", "more.example"} <= set(sans.get_values_for_type(x509.DNSName))
    kubeconfig = node.root / "etc/rancher/k3s/k3s.yaml"
    assert kubeconfig.stat().st_mode & 0o777 == 0o644


def test_agent_only_keys_warn_for_agent(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "a1")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("token: t\nserver: http://h:1\ntls-san: [x]\n")
    rc, _, err = k3s.run(["agent", "--config", str(cfg)], node.env)
    assert rc == 1
    assert "Unknown flag --tls-san found in config.yaml, skipping" in err
    assert "only https:// URLs are supported, invalid scheme: http://h:1" in err


def test_missing_explicit_config_is_fatal(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    rc, _, err = k3s.run(["server", "-c", str(tmp_path / "nope.yaml")], node.env)
    assert rc == 1
    assert "level=fatal" in err and "nope.yaml" in err


def test_env_fallbacks_for_server(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    data = tmp_path / "elsewhere"
    env = {**node.env, "K3S_TOKEN": "envpw", "K3S_DATA_DIR": str(data)}
    s = k3s.start(node.server_args(), env)
    s.wait_log("k3s is up and running")
    assert (data / "server/token").read_text().strip().endswith("::server:envpw")
