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


def test_status_shows_the_ca_pin_and_its_alarms() -> None:
    from k3snoded.describe import describe_status

    status = {
        "node": {"name": "n3", "role": "agent"},
        "k3s": {"ready": True},
        "ca_pin": {
            "ca_hash": "ab" * 32,
            "source": "datastore",
            "agent_token": True,
            "alarms": ["the datastore's ca_hash flag says ..."],
        },
    }
    text = describe_status(status)
    assert "ca pin    abababababababab… from datastore; agents join with the agent token" in text
    assert "ALARM     the datastore's ca_hash flag says ..." in text
    waiting = {**status, "ca_pin": {"ca_hash": None, "agent_token": False, "alarms": []}}
    assert "ca pin    not known yet; agents join with the cluster token's password" in (
        describe_status(waiting)
    )


def test_check_config_says_which_token_the_machine_holds(tmp_path: Path) -> None:
    from k3snoded.config import ClusterConfig

    agent_only = Config(cluster=ClusterConfig(agent_token_file=tmp_path / "agent-token"))
    text = describe_config(agent_only)
    assert f"the agent token only ({tmp_path / 'agent-token'})" in text
    assert "the cluster token (/etc/k3snoded/token)" in describe_config(Config())
