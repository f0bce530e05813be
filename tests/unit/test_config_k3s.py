"""check-config refuses what real k3s refuses or mishandles (k3snoded._config_k3s, issue 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from k3snoded import _config_k3s
from k3snoded.config import Config
from k3snoded.errors import ConfigProblem
from tests.unit.test_config_support import ConfigDir, deep_merge

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "reserved label",
        {"node": {"labels": ["tier=gold", "node-role.kubernetes.io/worker=true"]}},
        "node.labels[1]",
        "the kubelet refuses",
    ),
    (
        "reserved label in server_args",
        {"k3s": {"server_args": ["--node-label=k8s.io/x=y"]}},
        "k3s.server_args[0]",
        "the kubelet refuses",
    ),
    (
        "reserved label, separate value",
        {"k3s": {"agent_args": ["--node-label", "kubernetes.io/role=db"]}},
        "k3s.agent_args[1]",
        "the kubelet refuses",
    ),
    (
        "--log",
        {"k3s": {"server_args": ["--log=/var/log/k3s.log"]}},
        "k3s.server_args[0]",
        "READY=1",
    ),
    ("-l", {"k3s": {"agent_args": ["-l", "/tmp/k3s.log"]}}, "k3s.agent_args[0]", "READY=1"),
    (
        "node password elsewhere",
        {"k3s": {"node_password_file": "/etc/k3snoded/node-password"}},
        "k3s.node_password_file",
        "/etc/rancher/node/password",
    ),
    (
        "listen port with a VIP",
        {"k3s": {"server_args": ["--https-listen-port", "7443"]}},
        "k3s.server_args[0]",
        ":6443",
    ),
]


@pytest.mark.parametrize(("name", "overlay", "key", "reason"), CASES, ids=[c[0] for c in CASES])
def test_refused(tmp_path: Path, name: str, overlay: dict[str, Any], key: str, reason: str) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), overlay))
    found = [p for p in d.problems() if p.key == key]
    assert found, f"{name}: no problem at {key}"
    assert reason in found[0].reason and str(d.main) == found[0].file


def test_a_kubeadm_bootstrap_token_is_refused(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.token.write_text("abcdef.0123456789abcdef\n")
    d.write(d.fleet())
    [problem] = [p for p in d.problems() if p.key == "cluster.token_file"]
    assert "failed to normalize server token" in problem.reason
    assert "abcdef.0123456789abcdef" not in problem.reason  # never the token itself


@pytest.mark.parametrize(
    "overlay",
    [
        {"node": {"labels": ["node.kubernetes.io/pool=a", "topology.kubernetes.io/zone=z1"]}},
        {"k3s": {"node_password_file": "/srv/k3s/agent/etc/rancher/node/password"}},  # rootless
        {
            "k3s": {"server_args": ["--https-listen-port=7443"]},
            "registration": {"address": "lb.example.internal", "vip": {"enabled": False}},
        },
        {"k3s": {"server_args": ["--https-listen-port", "6443"]}},
        {"datastore": {"endpoint": "mysql://u:p@tcp(db:3306)/k3s?tls=skip-verify"}},  # kine's
    ],
)
def test_accepted(tmp_path: Path, overlay: dict[str, Any]) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), overlay))
    assert isinstance(d.load(), Config)


class _Sink:
    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []

    def add(self, key: str, reason: str) -> None:
        self.problems.append(ConfigProblem("main", key, reason))


def test_a_leftover_k3s_config_file_is_refused(tmp_path: Path) -> None:
    """/etc/rancher/k3s/config.yaml (+ .d/) from a plain k3s install is read by k3s however it
    is started; its values become flags that beat K3S_DATASTORE_ENDPOINT."""
    d = ConfigDir(tmp_path)
    d.write(d.fleet())
    cfg = d.load()
    leftover = tmp_path / "rancher" / "config.yaml"
    leftover.parent.mkdir()
    sink = _Sink()
    _config_k3s.check(sink, cfg, k3s_config=leftover)
    assert sink.problems == []
    leftover.write_text("datastore-endpoint: mysql://old:pw@tcp(db:3306)/old\ndisable: traefik\n")
    _config_k3s.check(sink, cfg, k3s_config=leftover)
    dropin = leftover.parent / "config.yaml.d"
    dropin.mkdir()
    (dropin / "10-x.yaml").write_text("token: t\n")
    leftover.unlink()
    _config_k3s.check(sink, cfg, k3s_config=leftover)
    problems = sink.problems
    assert [p.file for p in problems] == [str(leftover), str(dropin / "10-x.yaml")]
    assert (
        "datastore-endpoint" in problems[0].reason
        and "K3S_DATASTORE_ENDPOINT" in problems[0].reason
    )
    assert "pw" not in problems[0].reason  # names keys, never values
