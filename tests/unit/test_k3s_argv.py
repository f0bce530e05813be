"""The k3s command lines, environment and token file, table-driven."""

from __future__ import annotations

import dataclasses
import itertools
import os
import stat
from pathlib import Path

import pytest

from k3snoded.capin import Pin
from k3snoded.config import (
    ClusterConfig,
    Config,
    DatastoreConfig,
    K3sConfig,
    NodeConfig,
    RegistrationConfig,
    ServersConfig,
)
from k3snoded.errors import ConfigError
from k3snoded.k3s import (
    DATASTORE_ENV,
    agent_argv,
    child_env,
    child_spec,
    install_token_file,
    server_argv,
)
from k3snoded.model import Role

TOKEN = "K10secret-token-value-4f1c::server:0123456789abcdef"
PASSWORD = "s3cr3t-db-pass"
MYSQL = f"mysql://k3s:{PASSWORD}@tcp(db.example:3306)/k3s"
TOKEN_FILE = Path("/var/lib/k3snoded/token")


def _cfg(**sections: object) -> Config:
    base = Config(
        node=NodeConfig(name="node-a", address="10.0.0.11"),
        k3s=K3sConfig(binary=Path("/usr/local/bin/k3s"), data_dir=Path("/var/lib/rancher/k3s")),
    )
    return dataclasses.replace(base, **sections)  # type: ignore[arg-type]


def _has_pair(argv: list[str], flag: str, value: str) -> bool:
    return any(a == flag and b == value for a, b in itertools.pairwise(argv))


SERVER_CASES: list[tuple[str, Config, str, list[str]]] = [
    (
        "embedded sqlite, no registration",
        _cfg(),
        "",
        [
            "/usr/local/bin/k3s",
            "server",
            "--data-dir",
            "/var/lib/rancher/k3s",
            "--node-name",
            "node-a",
            "--node-ip",
            "10.0.0.11",
            "--token-file",
            str(TOKEN_FILE),
        ],
    ),
    (
        "external datastore with VIP and extra SANs",
        _cfg(
            datastore=DatastoreConfig(endpoint=MYSQL),
            registration=RegistrationConfig(
                address="10.0.0.100", tls_san=("k3s.example", "10.0.0.100")
            ),
        ),
        "10.0.0.100",
        [
            "/usr/local/bin/k3s",
            "server",
            "--data-dir",
            "/var/lib/rancher/k3s",
            "--node-name",
            "node-a",
            "--node-ip",
            "10.0.0.11",
            "--token-file",
            str(TOKEN_FILE),
            "--tls-san",
            "10.0.0.100",
            "--tls-san",
            "k3s.example",
        ],
    ),
    (
        "dedicated control plane with datastore TLS, labels, taints, extra args",
        _cfg(
            datastore=DatastoreConfig(
                endpoint=f"postgres://k3s:{PASSWORD}@db:5432/k3s?sslmode=verify-full",
                ca_file=Path("/etc/k3snoded/db-ca.pem"),
                cert_file=Path("/etc/k3snoded/db-cert.pem"),
                key_file=Path("/etc/k3snoded/db-key.pem"),
            ),
            servers=ServersConfig(count=3, dedicated=True),
            node=NodeConfig(
                name="node-a",
                address="10.0.0.11",
                labels=("zone=a",),
                taints=("gpu=true:NoSchedule",),
            ),
            k3s=K3sConfig(
                binary=Path("/opt/k3s"),
                data_dir=Path("/srv/k3s"),
                server_args=("--disable", "traefik", "--write-kubeconfig-mode=0600"),
            ),
        ),
        "vip.example",
        [
            "/opt/k3s",
            "server",
            "--data-dir",
            "/srv/k3s",
            "--node-name",
            "node-a",
            "--node-ip",
            "10.0.0.11",
            "--token-file",
            str(TOKEN_FILE),
            "--datastore-cafile",
            "/etc/k3snoded/db-ca.pem",
            "--datastore-certfile",
            "/etc/k3snoded/db-cert.pem",
            "--datastore-keyfile",
            "/etc/k3snoded/db-key.pem",
            "--tls-san",
            "vip.example",
            "--node-taint",
            "k3s-controlplane=true:NoExecute",
            "--node-label",
            "zone=a",
            "--node-taint",
            "gpu=true:NoSchedule",
            "--disable",
            "traefik",
            "--write-kubeconfig-mode=0600",
        ],
    ),
    (
        "IPv6 node and registration",
        _cfg(node=NodeConfig(name="node-6", address="fd00::11")),
        "fd00::100",
        [
            "/usr/local/bin/k3s",
            "server",
            "--data-dir",
            "/var/lib/rancher/k3s",
            "--node-name",
            "node-6",
            "--node-ip",
            "fd00::11",
            "--token-file",
            str(TOKEN_FILE),
            "--tls-san",
            "fd00::100",
        ],
    ),
]


@pytest.mark.parametrize(
    ("cfg", "registration", "expected"),
    [c[1:] for c in SERVER_CASES],
    ids=[c[0] for c in SERVER_CASES],
)
def test_server_argv(cfg: Config, registration: str, expected: list[str]) -> None:
    argv = server_argv(cfg, token_file=TOKEN_FILE, registration=registration)
    assert argv == expected
    assert not any(a.startswith("--datastore-endpoint") for a in argv)
    assert all(PASSWORD not in a for a in argv)
    assert all(" " not in a for a in argv)  # never a glued '--flag value'


AGENT_CASES: list[tuple[str, Config, str, list[str]]] = [
    (
        "agent via VIP",
        _cfg(),
        "10.0.0.100",
        [
            "/usr/local/bin/k3s",
            "agent",
            "--server",
            "https://10.0.0.100:6443",
            "--token-file",
            str(TOKEN_FILE),
            "--data-dir",
            "/var/lib/rancher/k3s",
            "--node-name",
            "node-a",
            "--node-ip",
            "10.0.0.11",
        ],
    ),
    (
        "agent via IPv6, labels, taints, extra args",
        _cfg(
            node=NodeConfig(
                name="edge", address="fd00::12", labels=("a=b", "c=d"), taints=("x=y:NoExecute",)
            ),
            k3s=K3sConfig(agent_args=("--kubelet-arg", "max-pods=200")),
        ),
        "fd00::100",
        [
            "/usr/local/bin/k3s",
            "agent",
            "--server",
            "https://[fd00::100]:6443",
            "--token-file",
            str(TOKEN_FILE),
            "--data-dir",
            "/var/lib/rancher/k3s",
            "--node-name",
            "edge",
            "--node-ip",
            "fd00::12",
            "--node-label",
            "a=b",
            "--node-label",
            "c=d",
            "--node-taint",
            "x=y:NoExecute",
            "--kubelet-arg",
            "max-pods=200",
        ],
    ),
    (
        "agent via a DNS name",
        _cfg(),
        "k3s.example",
        [
            "/usr/local/bin/k3s",
            "agent",
            "--server",
            "https://k3s.example:6443",
            "--token-file",
            str(TOKEN_FILE),
            "--data-dir",
            "/var/lib/rancher/k3s",
            "--node-name",
            "node-a",
            "--node-ip",
            "10.0.0.11",
        ],
    ),
]


@pytest.mark.parametrize(
    ("cfg", "registration", "expected"),
    [c[1:] for c in AGENT_CASES],
    ids=[c[0] for c in AGENT_CASES],
)
def test_agent_argv(cfg: Config, registration: str, expected: list[str]) -> None:
    assert agent_argv(cfg, token_file=TOKEN_FILE, registration=registration) == expected


def test_agent_without_registration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"registration\.address"):
        agent_argv(_cfg(), token_file=TOKEN_FILE, registration="")


def test_child_env_scrubs_k3s_and_systemd_variables() -> None:
    base = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "K3S_URL": "https://elsewhere:6443",
        "K3S_TOKEN": TOKEN,
        "K3S_DATASTORE_ENDPOINT": "mysql://stale",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "JOURNAL_STREAM": "8:123",
    }
    assert child_env(base) == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def test_invocation_id_is_kept_non_empty_and_constant() -> None:
    """k3s picks the systemd cgroup driver from a non-empty INVOCATION_ID: under systemd k3s
    must see one, and the same one after every daemon restart (or adoption would restart it)."""
    first = child_env({"PATH": "/bin", "INVOCATION_ID": "0f3c9a"})
    second = child_env({"PATH": "/bin", "INVOCATION_ID": "77aa10"})
    assert first["INVOCATION_ID"] and first == second
    assert "INVOCATION_ID" not in child_env({"PATH": "/bin"})  # not under systemd: none


@pytest.mark.parametrize(
    ("server_args", "url"),
    [
        ((), "https://127.0.0.1:6443/readyz"),
        (("--https-listen-port", "7443"), "https://127.0.0.1:7443/readyz"),
        (("--https-listen-port=8443",), "https://127.0.0.1:8443/readyz"),
        (
            ("--bind-address", "0.0.0.0", "--https-listen-port", "7443"),
            "https://127.0.0.1:7443/readyz",
        ),
        (("--bind-address", "::1"), "https://[::1]:6443/readyz"),
    ],
)
def test_server_spec_ready_url(server_args: tuple[str, ...], url: str) -> None:
    cfg = _cfg(k3s=K3sConfig(server_args=server_args))
    assert child_spec(cfg, Role.SERVER, "", base_env={}).ready_url == url


def test_server_health_uses_the_admin_client_certificate() -> None:
    """/readyz needs credentials; k3s writes an admin client certificate under its data dir
    and the server is verified against the cluster's server CA."""
    spec = child_spec(_cfg(), Role.SERVER, "", base_env={})
    tls = Path("/var/lib/rancher/k3s/server/tls")
    assert spec.probe_tls is not None
    assert spec.probe_tls.ca == tls / "server-ca.crt"
    assert (spec.probe_tls.cert, spec.probe_tls.key) == (
        tls / "client-admin.crt",
        tls / "client-admin.key",
    )


def test_server_spec_passes_endpoint_in_env_only() -> None:
    cfg = _cfg(
        datastore=DatastoreConfig(endpoint=MYSQL),
        k3s=K3sConfig(ready_timeout=120.0, stop_timeout=20.0),
    )
    spec = child_spec(
        cfg, Role.SERVER, "10.0.0.100", base_env={"PATH": "/bin", "K3S_URL": "https://x:6443"}
    )
    assert spec.env_dict == {"PATH": "/bin", DATASTORE_ENV: MYSQL}
    assert all(PASSWORD not in a and TOKEN not in a for a in spec.argv)
    assert _has_pair(list(spec.argv), "--token-file", str(cfg.node.state_dir / "token"))
    assert (spec.ready_timeout, spec.stop_timeout) == (120.0, 20.0)


def test_sqlite_server_spec_sets_no_k3s_variable() -> None:
    spec = child_spec(_cfg(), Role.SERVER, "", base_env={"PATH": "/bin", "K3S_TOKEN": TOKEN})
    assert spec.env_dict == {"PATH": "/bin"}


def test_agent_spec_has_no_endpoint_and_no_ready_url() -> None:
    cfg = _cfg(datastore=DatastoreConfig(endpoint=MYSQL))
    spec = child_spec(cfg, Role.AGENT, "10.0.0.100", base_env={"PATH": "/bin"}, pin=PIN)
    assert spec.env_dict == {"PATH": "/bin"}
    assert spec.ready_url is None
    assert spec.argv[1] == "agent"


def test_an_agent_joins_with_the_token_file_of_its_pin_and_never_without_one() -> None:
    cfg = _cfg()
    spec = child_spec(cfg, Role.AGENT, "10.0.0.100", base_env={}, pin=PIN)
    token_file = cfg.node.state_dir / f"join-token.{PIN.ca_hash[:16]}"
    assert _has_pair(list(spec.argv), "--token-file", str(token_file))
    other = child_spec(cfg, Role.AGENT, "10.0.0.100", base_env={}, pin=Pin("cd" * 32, "k3s"))
    assert other.identity != spec.identity  # a new pin restarts the agent's k3s
    with pytest.raises(ValueError, match="CA hash"):
        child_spec(cfg, Role.AGENT, "10.0.0.100", base_env={})


def test_a_server_takes_the_agent_token_when_the_fleet_does() -> None:
    cfg = _cfg()
    plain = child_spec(cfg, Role.SERVER, "", base_env={})
    assert "--agent-token-file" not in plain.argv
    spec = child_spec(cfg, Role.SERVER, "", base_env={}, pin=Pin(agent_token=True))
    assert _has_pair(list(spec.argv), "--agent-token-file", str(cfg.node.state_dir / "agent-token"))


PIN = Pin("ab" * 32, "datastore", agent_token=True)


def test_no_spec_for_role_none() -> None:
    with pytest.raises(ValueError, match="none"):
        child_spec(_cfg(), Role.NONE, "")


def test_spec_identity_ignores_readiness_settings() -> None:
    cfg = _cfg()
    a = child_spec(cfg, Role.SERVER, "", base_env={"PATH": "/bin"})
    b = child_spec(
        _cfg(k3s=K3sConfig(ready_timeout=1.0)), Role.SERVER, "", base_env={"PATH": "/bin"}
    )
    c = child_spec(cfg, Role.SERVER, "10.0.0.100", base_env={"PATH": "/bin"})
    assert a.identity == b.identity
    assert a.identity != c.identity
    assert a == child_spec(cfg, Role.SERVER, "", base_env={"PATH": "/bin"})


def test_install_token_file(tmp_path: Path) -> None:
    source = tmp_path / "etc" / "token"
    source.parent.mkdir()
    source.write_text(TOKEN + "\n")
    cfg = _cfg(
        cluster=ClusterConfig(token_file=source),
        node=NodeConfig(state_dir=tmp_path / "state"),
    )
    path = install_token_file(cfg)
    assert path == tmp_path / "state" / "token"
    assert path.read_text() == TOKEN + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    inode = path.stat().st_ino
    install_token_file(cfg)  # unchanged: not rewritten
    assert path.stat().st_ino == inode

    source.write_text("rotated\n")
    install_token_file(cfg)
    assert path.read_text() == "rotated\n"
    assert path.stat().st_ino != inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temp files left


def test_install_token_file_fixes_loose_mode(tmp_path: Path) -> None:
    source = tmp_path / "token"
    source.write_text(TOKEN)
    cfg = _cfg(cluster=ClusterConfig(token_file=source), node=NodeConfig(state_dir=tmp_path / "s"))
    path = install_token_file(cfg)
    os.chmod(path, 0o644)
    install_token_file(cfg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_node_password_leaves_etc_rancher_readable(tmp_path: Path) -> None:
    """k3s creates the node password's parents 0755; under the unit's UMask=0077 a plain
    mkdir made /etc/rancher 0700 and non-root users lost /etc/rancher/k3s/k3s.yaml."""
    from k3snoded.k3s import ensure_node_password

    path = tmp_path / "etc" / "rancher" / "node" / "password"
    cfg = _cfg(k3s=K3sConfig(node_password_file=path))
    old = os.umask(0o077)
    try:
        assert ensure_node_password(cfg, b"k" * 32)
    finally:
        os.umask(old)
    for d in (tmp_path / "etc" / "rancher", path.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
