"""``cluster.agent_token_file``: an agent-only machine holding only the agent token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_config_support import ConfigDir, deep_merge, find

HASH = "0f" * 32


def _agent_token(tmp_path: Path, text: str = f"K10{HASH}::node:agentpw", mode: int = 0o600) -> Path:
    path = tmp_path / "agent-token"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def _agent_machine(d: ConfigDir, token: Path, **overlay: Any) -> None:
    """The fleet's common config (mDNS, VIP, token file) plus this machine's drop-in."""
    d.write(d.fleet())
    drop: dict[str, Any] = {
        "cluster": {"token_file": None, "agent_token_file": str(token)},
        "node": {"role": "agent"},
        "datastore": {"endpoint": None},
    }
    d.write(deep_merge(drop, overlay), "50-machine.yaml")


def test_an_agent_only_machine_runs_with_the_agent_token_alone(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.token.unlink()  # the machine has no cluster token at all
    token = _agent_token(tmp_path)
    _agent_machine(d, token)
    cfg = d.load()
    assert cfg.cluster.agent_token_file == token
    # It verifies nothing peers sign and is never a server: no discovery, no VIP, whatever
    # the fleet's common file says.
    assert cfg.discovery.mdns is False and cfg.discovery.seeds == ()
    assert cfg.registration.vip.enabled is False
    assert cfg.registration.address == "10.0.0.100"


@pytest.mark.parametrize(
    ("overlay", "key", "words"),
    [
        ({"cluster": {"token_file": "/etc/k3snoded/token"}}, "cluster.agent_token_file", "both"),
        ({"node": {"role": "auto"}}, "node.role", "must be agent"),
        (
            {"datastore": {"endpoint": "mysql://k3s:pw@tcp(127.0.0.1:3306)/k3s"}},
            "datastore.endpoint",
            "fleet member",
        ),
        ({"registration": {"address": None}}, "registration.address", "cannot verify"),
    ],
)
def test_contradictions_are_refused(
    tmp_path: Path, overlay: dict[str, Any], key: str, words: str
) -> None:
    d = ConfigDir(tmp_path)
    _agent_machine(d, _agent_token(tmp_path), **overlay)
    assert words in find(d.problems(), key).reason


@pytest.mark.parametrize(
    ("text", "mode", "words"),
    [
        ("agentpw", 0o600, "has no CA hash"),
        ("K10::node:agentpw", 0o600, "has no CA hash"),
        (f"K10{HASH.upper()}::node:agentpw", 0o600, "64 lower-case hex"),
        (f"K10{HASH}::node:", 0o600, "invalid token format"),
        (f"K10{HASH}::node:agentpw", 0o644, "readable by group or others"),
    ],
)
def test_the_agent_token_must_pin_the_ca_and_be_private(
    tmp_path: Path, text: str, mode: int, words: str
) -> None:
    d = ConfigDir(tmp_path)
    _agent_machine(d, _agent_token(tmp_path, text, mode))
    problem = find(d.problems(), "cluster.agent_token_file")
    assert words in problem.reason
    assert "agentpw" not in str(problem)  # the reason never shows the token


def test_a_missing_agent_token_file_is_named(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    _agent_machine(d, tmp_path / "nowhere")
    assert "does not exist" in find(d.problems(), "cluster.agent_token_file").reason


def test_a_secure_cluster_token_must_have_a_hash_k3s_can_match(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.token.write_text(f"K10{'Z' * 64}::server:pw\n")
    d.write(d.fleet())
    assert "64 lower-case hex" in find(d.problems(), "cluster.token_file").reason
    d.token.write_text(f"K10{HASH}::server:pw\n")
    assert d.load().cluster.agent_token_file is None
