"""Helpers for the config tests (no tests here): a config dir with a 0600 token, host facts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from k3snoded.config import Config, HostFacts, Interface, load_config
from k3snoded.errors import ConfigError, ConfigProblem

HOST = HostFacts(
    hostname="Node-1",
    default_route_interface="eth0",
    interfaces=(
        Interface("lo", up=True, loopback=True, ipv4="127.0.0.1"),
        Interface("eth0", up=True, loopback=False, ipv4="10.0.0.11"),
    ),
)
TOKEN = "0123456789abcdef0123456789abcdef"


class ConfigDir:
    """``<tmp>/etc/config.yaml`` plus ``config.d/`` drop-ins and a token file."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "etc"
        self.dir.mkdir()
        self.main = self.dir / "config.yaml"
        self.token = root / "token"
        self.token.write_text(TOKEN + "\n")
        self.token.chmod(0o600)

    def fleet(self) -> dict[str, Any]:
        """A valid 3-server fleet with MySQL and a VIP."""
        return {
            "cluster": {"name": "test", "token_file": str(self.token)},
            "datastore": {"endpoint": "mysql://k3s:pw@tcp(127.0.0.1:3306)/k3s"},
            "servers": {"count": 3},
            "registration": {"address": "10.0.0.100"},
        }

    def write(self, data: dict[str, Any] | str, name: str | None = None) -> Path:
        """Write the main file (``name`` None) or the drop-in ``config.d/<name>``."""
        text = data if isinstance(data, str) else yaml.safe_dump(data)
        if name is None:
            path = self.main
        else:
            (self.dir / "config.d").mkdir(exist_ok=True)
            path = self.dir / "config.d" / name
        path.write_text(text)
        return path

    def load(self, host: HostFacts = HOST) -> Config:
        return load_config(self.main, host=host)

    def problems(self, host: HostFacts = HOST) -> list[ConfigProblem]:
        with pytest.raises(ConfigError) as info:
            self.load(host)
        return info.value.problems


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def find(problems: list[ConfigProblem], key: str) -> ConfigProblem:
    matching = [p for p in problems if p.key == key]
    assert matching, f"no problem at {key!r}; got: {[str(p) for p in problems]}"
    return matching[0]
