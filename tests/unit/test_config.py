"""load_config: reading, drop-ins and provenance, defaults, typed result, the example config."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from k3snoded.config import (
    DEFAULT_API_PORT,
    Config,
    HostFacts,
    Interface,
    config_summary,
    detect_host,
    load_config,
)
from k3snoded.errors import ConfigError
from k3snoded.model import RolePreference
from tests.unit.test_config_support import HOST, ConfigDir, deep_merge, find

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "config.example.yaml"


def test_fleet_config_is_typed_and_frozen(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(
        deep_merge(
            d.fleet(),
            {
                "node": {"labels": ["a=b"], "taints": ["k=v:NoSchedule"], "role": "server"},
                "coordination": {"renew_interval": 1, "lease_ttl": 6},
                "registration": {"tls_san": ["k8s.example.com"], "vip": {"advert_interval": 1}},
                "datastore": {"ca_file": "", "cert_file": None},
            },
        )
    )
    cfg = d.load()
    assert cfg.source == d.main
    assert cfg.cluster.token_file == d.token
    assert cfg.node.role is RolePreference.SERVER
    assert cfg.node.labels == ("a=b",)
    assert cfg.node.taints == ("k=v:NoSchedule",)
    assert isinstance(cfg.coordination.renew_interval, float)
    assert cfg.registration.vip.advert_interval == 1.0
    assert cfg.registration.tls_san == ("k8s.example.com",)
    assert cfg.datastore.ca_file is None and cfg.datastore.cert_file is None
    assert cfg.servers.count == 3
    assert isinstance(cfg.k3s.binary, Path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.servers.count = 1  # type: ignore[misc]


def test_defaults_come_from_host_facts(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(d.fleet())
    cfg = d.load()
    assert cfg.node.name == "node-1"  # lower-cased host name
    assert cfg.node.interface == "eth0"
    assert cfg.node.address == "10.0.0.11"
    assert cfg.registration.vip.interface == "eth0"
    assert cfg.registration.vip.enabled


def test_without_default_route_the_first_up_interface_is_used(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(d.fleet())
    host = HostFacts(
        hostname="n",
        interfaces=(
            Interface("lo", up=True, loopback=True, ipv4="127.0.0.1"),
            Interface("eth0", up=False, loopback=False, ipv4="10.0.0.5"),
            Interface("eth1", up=True, loopback=False, ipv4="10.0.0.12"),
        ),
    )
    cfg = d.load(host)
    assert (cfg.node.interface, cfg.node.address) == ("eth1", "10.0.0.12")


def test_explicit_values_beat_detection(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    node = {"name": "box-7", "interface": "bond0", "address": "10.0.0.77"}
    d.write(deep_merge(d.fleet(), {"node": node, "registration": {"vip": {"interface": "vlan9"}}}))
    cfg = d.load()
    assert (cfg.node.name, cfg.node.interface, cfg.node.address) == ("box-7", "bond0", "10.0.0.77")
    assert cfg.registration.vip.interface == "vlan9"


def test_embedded_default_single_server(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write({"cluster": {"token_file": str(d.token)}})
    cfg = d.load()
    assert cfg.datastore.is_sqlite
    assert cfg.servers.count == 1
    assert not cfg.registration.vip.enabled
    assert cfg.api.listen == f"0.0.0.0:{DEFAULT_API_PORT}"
    assert cfg.node.role is RolePreference.AUTO


def test_bare_sqlite_endpoint_becomes_the_embedded_default(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write({"cluster": {"token_file": str(d.token)}, "datastore": {"endpoint": "sqlite"}})
    cfg = d.load()
    assert cfg.datastore.endpoint == "" and cfg.datastore.is_sqlite and cfg.servers.count == 1


def test_external_load_balancer_by_name(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    overlay = {"registration": {"address": "k8s.example.com", "vip": {"enabled": False}}}
    cfg = load_and(d, overlay)
    assert cfg.registration.address == "k8s.example.com"
    assert not cfg.registration.vip.enabled


def test_agent_only_node_without_datastore(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    cfg = load_and(d, {"datastore": {"endpoint": ""}})
    assert cfg.servers.count == 3 and cfg.datastore.is_sqlite


@pytest.mark.parametrize("discovery", [{}, {"mdns": False, "seeds": ["10.0.0.21:6480"]}])
def test_agent_may_learn_the_registration_address(
    tmp_path: Path, discovery: dict[str, Any]
) -> None:
    d = ConfigDir(tmp_path)
    overlay = {
        "node": {"role": "agent"},
        "datastore": {"endpoint": ""},
        "registration": {"address": ""},
        "discovery": discovery,
    }
    cfg = load_and(d, overlay)
    assert cfg.node.role is RolePreference.AGENT and not cfg.registration.vip.enabled


@pytest.mark.parametrize(
    "endpoint",
    [
        "mysql://k3s:p@ss@tcp(db:3306)/k3s?timeout=5s",
        "mysql://",
        "mysql://root@unix(/run/mysqld/mysqld.sock)/k3s",
        "postgres://k3s:pw@db:5432/k3s?sslmode=verify-full",
        "postgresql://k3s:pw@db/k3s",
        "https://e1:2379,https://e2:2379,https://e3:2379",
        "http://127.0.0.1:2379",
        "nats://",
    ],
)
def test_valid_endpoints(tmp_path: Path, endpoint: str) -> None:
    d = ConfigDir(tmp_path)
    assert load_and(d, {"datastore": {"endpoint": endpoint}}).datastore.endpoint == endpoint


@pytest.mark.parametrize("listen", ["", ":6480", "[::]:6480", "127.0.0.1:1", "localhost:6480"])
def test_api_listen_forms(tmp_path: Path, listen: str) -> None:
    d = ConfigDir(tmp_path)
    assert load_and(d, {"api": {"listen": listen}}).api.listen == listen


def load_and(d: ConfigDir, overlay: dict[str, Any]) -> Config:
    d.write(deep_merge(d.fleet(), overlay))
    return d.load()


def test_datastore_tls_files(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    tls = {
        "ca_file": str(tmp_path / "ca.pem"),
        "cert_file": str(tmp_path / "client.pem"),
        "key_file": str(tmp_path / "client.key"),
    }
    cfg = load_and(d, {"datastore": tls})
    assert cfg.datastore.key_file == tmp_path / "client.key"


# --- reading files ------------------------------------------------------------------------


def test_missing_main_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", host=HOST)
    [problem] = info.value.problems
    assert problem.file == str(tmp_path / "nope.yaml")
    assert problem.key == "" and "does not exist" in problem.reason


def test_main_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path, host=HOST)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"servers: {count: 3\n", "not valid YAML"),
        (b"a: b\n  c: d\n", "line 2"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"- a\n- b\n", "top level must be a mapping"),
        (b"just text\n", "top level must be a mapping"),
        (b"a: 1\n---\nb: 2\n", "not valid YAML"),
        (b"a: !!python/object:os.system x\n", "not valid YAML"),
        (b"d: 2001-02-30\n", "not valid YAML"),
    ],
)
def test_unparseable_main_file(tmp_path: Path, content: bytes, reason: str) -> None:
    d = ConfigDir(tmp_path)
    d.main.write_bytes(content)
    problems = d.problems()
    assert problems[0].file == str(d.main)
    assert reason in problems[0].reason


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    lines = ["a0: &a0 {x: 1, y: 2}"]
    lines += [f"a{i}: &a{i} {{p: *a{i - 1}, q: *a{i - 1}}}" for i in range(1, 40)]
    d.write("\n".join(lines) + "\n")
    [problem] = d.problems()
    assert problem.key == "" and "nested YAML aliases" in problem.reason


def test_empty_main_file_means_defaults(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write("# nothing yet\n")
    d.write({"cluster": {"token_file": str(d.token)}}, "token.yaml")
    assert d.load().servers.count == 1


def test_duplicate_keys_are_all_reported(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(
        "servers:\n  count: 3\nregistration:\n  vip:\n    vrid: 5\n    vrid: 6\n"
        "servers:\n  count: 2\n"
    )
    problems = d.problems()
    assert {p.key for p in problems} == {"servers", "registration.vip.vrid"}
    vrid = find(problems, "registration.vip.vrid")
    assert vrid.file == str(d.main)
    assert "duplicate key (line 6; first set on line 5)" in vrid.reason


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(
        f"cluster: {{name: test, token_file: {d.token}}}\n"
        "base: &b {dedicated: true}\n"
        "servers:\n  <<: *b\n  dedicated: false\n"
    )
    assert [p.key for p in d.problems()] == ["base"]  # only the unknown helper key


def test_several_problems_in_several_files_at_once(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), {"servers": {"count": 0}, "nodee": {}}))
    dropin = d.write({"registration": {"vip": {"vrid": 300, "prefix": "24"}}}, "50-vip.yaml")
    problems = d.problems()
    assert find(problems, "servers.count").file == str(d.main)
    assert "did you mean 'node'?" in find(problems, "nodee").reason
    assert find(problems, "registration.vip.vrid").file == str(dropin)
    assert find(problems, "registration.vip.prefix").file == str(dropin)
    assert len(problems) == 4
    with pytest.raises(ConfigError) as info:
        d.load()
    message = str(info.value)
    assert "4 problem(s)" in message and f"{dropin}: registration.vip.vrid:" in message


# --- drop-ins -----------------------------------------------------------------------------


def test_dropins_merge_in_lexical_order(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), {"registration": {"vip": {"vrid": 7, "priority": 50}}}))
    d.write({"servers": {"count": 4}}, "20-b.yaml")
    d.write({"servers": {"count": 5}, "registration": {"vip": {"priority": 90}}}, "30-c.yml")
    d.write({"servers": {"count": 9}}, "100-a.yaml")  # lexical: "100" sorts before "20"
    cfg = d.load()
    assert cfg.servers.count == 5
    assert cfg.registration.vip.priority == 90
    assert cfg.registration.vip.vrid == 7  # deep merge keeps the main file's sibling
    assert cfg.registration.address == "10.0.0.100"


def test_lists_are_replaced_not_appended(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), {"node": {"labels": ["a=1", "b=2"]}}))
    d.write({"node": {"labels": ["c=3"]}}, "10.yaml")
    assert d.load().node.labels == ("c=3",)


def test_empty_value_unsets_but_empty_section_keeps(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), {"node": {"labels": ["a=1"]}, "servers": {"dedicated": True}}))
    d.write("servers:\n  dedicated:\nnode:\n  # labels: [x=y]\n", "10.yaml")
    cfg = d.load()
    assert cfg.servers.dedicated is False  # back to the default
    assert cfg.node.labels == ("a=1",)  # the empty section did not wipe node.*


def test_error_in_dropin_names_the_dropin(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(d.fleet())
    dropin = d.write({"node": {"taints": ["ok=1:NoSchedule", "bad"]}, "servrs": {}}, "10-x.yaml")
    problems = d.problems()
    assert find(problems, "node.taints[1]").file == str(dropin)
    assert find(problems, "servrs").file == str(dropin)


def test_dropin_fixes_main_file_value(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), {"registration": {"vip": {"vrid": 999}}}))
    d.write({"registration": {"vip": {"vrid": 52}}}, "10.yaml")
    assert d.load().registration.vip.vrid == 52


def test_provenance_follows_the_last_writer(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), {"servers": {"count": 0}}))
    d.write({"servers": {"dedicated": True}}, "10.yaml")  # touches servers, not count
    assert find(d.problems(), "servers.count").file == str(d.main)
    later = d.write({"servers": {"count": -1}}, "20.yaml")
    assert find(d.problems(), "servers.count").file == str(later)


def test_cross_key_problem_names_the_file_of_the_key(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(d.fleet())
    dropin = d.write({"datastore": {"endpoint": "sqlite"}}, "10-local.yaml")
    problem = find(d.problems(), "datastore.endpoint")
    assert problem.file == str(dropin) and "SQLite" in problem.reason


def test_dropin_errors_and_ignored_files(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(d.fleet())
    d.write("not: [valid", ".hidden.yaml")
    d.write("not: [valid", "notes.txt")
    d.write("not: [valid", "10.yaml.bak")
    broken = d.write("servers: [1, 2]\nservers: 3\n", "20.YAML")
    toplist = d.write("- a\n", "30.yml")
    problems = d.problems()
    assert {p.file for p in problems} == {str(broken), str(toplist)}
    assert "duplicate key" in find(problems, "servers").reason


def test_broken_dropin_still_reports_type_errors_elsewhere(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(deep_merge(d.fleet(), {"servers": {"count": "many"}}))
    broken = d.write("servers: {count: 3\n", "10.yaml")
    problems = d.problems()
    assert {(p.file, p.key) for p in problems} == {
        (str(d.main), "servers.count"),
        (str(broken), ""),
    }


# --- the example, the summary, the real machine -----------------------------------------


def test_example_config_validates(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    d.write(EXAMPLE.read_text())
    d.write({"cluster": {"token_file": str(d.token)}}, "00-token.yaml")
    cfg = d.load()
    assert cfg.servers.count == 3
    assert cfg.datastore.endpoint.startswith("mysql://") and "tcp(" in cfg.datastore.endpoint
    assert cfg.registration.address == "10.0.0.100" and cfg.registration.vip.enabled


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()

    def keys(cls: type, prefix: str) -> list[str]:
        out: list[str] = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            hint = hints[f.name]
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                out += keys(hint, f"{prefix}{f.name}.")
            else:
                out.append(f"{prefix}{f.name}")
        return out

    for key in keys(Config, ""):
        assert f"{key.rsplit('.', 1)[-1]}:" in text, f"{key} is not documented in the example"


def test_summary_has_no_password(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    cfg = load_and(d, {"datastore": {"endpoint": "mysql://k3s:hunter2@tcp(db:3306)/k3s"}})
    line = config_summary(cfg)
    assert "\n" not in line and "hunter2" not in line and "node-1" in line
    assert "hunter2" not in repr(cfg)


def test_real_detection_does_not_fail() -> None:
    facts = detect_host()
    assert facts.hostname
    assert any(i.loopback for i in facts.interfaces)
    assert facts.default_interface() != "lo"
