"""check-config says what run will do with the configuration (roles.describe_role is what
build_role_source decides by)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from k3snoded.config import Config, DatastoreConfig, NodeConfig, RegistrationConfig, VipConfig
from k3snoded.describe import describe_config
from k3snoded.model import RolePreference

PG = DatastoreConfig(endpoint="postgres://k3s:secret@db/k3s")
VIP = RegistrationConfig(address="198.18.0.100", vip=VipConfig(enabled=True, interface="eth0"))


def line(cfg: Config) -> str:
    text = describe_config(dataclasses.replace(cfg, source=Path("/etc/k3snoded/config.yaml")))
    return next(x for x in text.splitlines() if "this machine" in x)


def test_fleet_member_with_a_vip() -> None:
    cfg = Config(datastore=PG, registration=VIP, node=NodeConfig(name="n1"))
    assert "fleet member: the coordinator decides" in line(cfg)
    assert "holds the VIP 198.18.0.100" in line(cfg)
    assert "secret" not in describe_config(dataclasses.replace(cfg, source=Path("/x")))


def test_fleet_agent() -> None:
    cfg = Config(datastore=PG, registration=VIP, node=NodeConfig(role=RolePreference.AGENT))
    assert "always an agent" in line(cfg) and "198.18.0.100" in line(cfg)


def test_no_shared_datastore() -> None:
    assert "single server on k3s's embedded datastore" in line(Config())
    agent = Config(registration=VIP)
    assert "agent joining https://198.18.0.100:6443" in line(agent)
