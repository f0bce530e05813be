"""Reload means what it says: SIGHUP applies every changed key fully, or refuses the whole
reload naming the keys that need a restart and keeps the running configuration."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from k3snoded._config_reload import APPLIED, RESTART, leaves, needs_restart, rule
from k3snoded.config import Config, load_config
from k3snoded.daemon import Daemon

REPO = Path(__file__).resolve().parents[2]


def test_every_key_is_classified_exactly_once() -> None:
    for key, _ in leaves(Config()):
        found = [name for name in (*RESTART, *APPLIED) if key == name or key.startswith(name + ".")]
        assert found, f"{key}: neither applied on reload nor restart-only"
        assert rule(key) is not None
    assert not set(RESTART) & set(APPLIED)


def test_the_config_reference_lists_every_key_with_its_reload_rule() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    for key, _ in leaves(Config()):
        kind, _why = rule(key) or ("?", "")
        row = re.search(rf"^\| `{re.escape(key)}` \|[^\n]*\| (applied|restart) \|", text, re.M)
        assert row is not None, f"docs/configuration.md has no row for {key}"
        assert row.group(1) == kind, f"{key}: docs say {row.group(1)}, the code says {kind}"


def _with(cfg: Config, section: str, **changes: Any) -> Config:
    return dataclasses.replace(
        cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)}
    )


def test_needs_restart_names_the_keys() -> None:
    cfg = Config()
    assert needs_restart(cfg, _with(cfg, "servers", count=3)) == []
    assert needs_restart(cfg, _with(cfg, "datastore", endpoint="mysql://a@tcp(h:1)/d")) == [
        "datastore.endpoint"
    ]
    assert needs_restart(cfg, _with(cfg, "discovery", seeds=("h",))) == ["discovery.seeds"]


def _write(path: Path, tmp: Path, endpoint: str, count: int) -> None:
    token = tmp / "token"
    if not token.exists():
        token.write_text("reload-test-token-0123456789abcdef\n")
        token.chmod(0o600)
    cfg = {
        "cluster": {"name": "lab", "token_file": str(token)},
        "node": {
            "name": "n1",
            "address": "198.18.0.11",
            "interface": "eth0",
            "state_dir": str(tmp / "state"),
            "run_dir": str(tmp / "run"),
        },
        "k3s": {
            "node_password_file": str(tmp / "etc/rancher/node/password"),
            "data_dir": str(tmp / "k3s"),
        },
        "datastore": {"endpoint": endpoint},
        "servers": {"count": count},
        "discovery": {"mdns": False},
        "api": {"listen": ""},
    }
    path.write_text(yaml.safe_dump(cfg))


async def test_sighup_refuses_a_new_datastore_and_keeps_the_running_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: k3s was restarted on the new database while coordination stayed on the old
    one (a second CA when every machine reloaded onto an empty database)."""
    path = tmp_path / "config.yaml"
    _write(path, tmp_path, "postgres://k3s:k3s@198.18.0.240/old", 2)
    daemon = Daemon(load_config(path))
    before = daemon.cfg
    _write(path, tmp_path, "postgres://k3s:k3s@198.18.0.240/new", 3)
    caplog.set_level(logging.INFO, logger="k3snoded")
    await daemon._reload()
    assert daemon.cfg == before and daemon.roles.cfg == before
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused and "datastore.endpoint" in refused[0], caplog.text
    assert "servers.count" not in refused[0]  # only the keys that need a restart are named
