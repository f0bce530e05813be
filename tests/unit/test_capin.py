"""The cluster CA pin (capin.py): where the hash comes from, the token files, the alarms."""

from __future__ import annotations

import hashlib
import logging
import stat
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from k3snoded import capin
from k3snoded.capin import CaPin, Pin
from k3snoded.config import (
    ClusterConfig,
    Config,
    CoordinationConfig,
    DatastoreConfig,
    K3sConfig,
    NodeConfig,
)
from k3snoded.datastore import Datastore, open_datastore
from k3snoded.datastore.startup import prepare
from k3snoded.discovery.signing import derive_key
from k3snoded.tokens import parse_token, read_token

TOKEN = "cluster-token-0123456789"
KEY = derive_key(TOKEN, "test")
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
A, B = "aa" * 32, "bb" * 32


def _cfg(tmp_path: Path, **cluster: object) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return Config(
        cluster=ClusterConfig(name="test", token_file=token, **cluster),  # type: ignore[arg-type]
        node=NodeConfig(name="n1", state_dir=tmp_path / "state"),
        k3s=K3sConfig(data_dir=tmp_path / "k3s"),
    )


def _server_file(cfg: Config, rel: str, data: bytes) -> None:
    path = cfg.k3s.data_dir / "server" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_a_servers_hash_is_the_one_k3s_wrote_else_its_single_certificate(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert capin.local_ca_hash(cfg) is None
    _server_file(cfg, "tls/server-ca.crt", PEM)
    assert capin.local_ca_hash(cfg) == hashlib.sha256(PEM).hexdigest()
    _server_file(cfg, "tls/server-ca.crt", PEM + PEM)  # a chain: k3s hashes the root's DER
    assert capin.local_ca_hash(cfg) is None
    _server_file(cfg, "token", f"K10{A}::server:pw\n".encode())  # k3s's own computation
    assert capin.local_ca_hash(cfg) == A


def test_the_join_token_pins_the_hash_with_the_right_password(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    cfg.node.state_dir.mkdir()
    derived = capin.write_join_token(cfg, Pin(A, "datastore", agent_token=True), KEY)
    assert derived == cfg.node.state_dir / f"join-token.{A[:16]}"
    token = parse_token(read_token(derived))
    assert (token.ca_hash, token.username) == (A, "node")
    assert token.password == capin.agent_password(KEY) != TOKEN
    assert stat.S_IMODE(derived.stat().st_mode) == 0o600
    # A fleet bootstrapped without an agent token: agents keep the cluster token's password.
    legacy = capin.write_join_token(cfg, Pin(B, "datastore"), KEY)
    assert parse_token(read_token(legacy)).password == TOKEN
    assert not derived.exists()  # one join token: the older pin's is gone
    assert capin.remembered_hash(cfg) == B
    with pytest.raises(ValueError, match="CA hash"):
        capin.write_join_token(cfg, Pin(), KEY)


def test_an_agent_only_machine_joins_with_its_agent_token(tmp_path: Path) -> None:
    agent_token = tmp_path / "agent-token"
    agent_token.write_text(f"K10{A}::node:agentpw\n")
    cfg = _cfg(tmp_path, agent_token_file=agent_token)
    (tmp_path / "token").unlink()  # it holds no cluster token
    assert capin.configured_hash(cfg) == A
    path = capin.write_join_token(cfg, Pin(A, "token file", agent_token=True), b"")
    assert read_token(path) == f"K10{A}::node:agentpw"


def test_a_single_server_takes_the_agent_token_only_on_a_cluster_made_with_it(
    tmp_path: Path,
) -> None:
    cfg = _cfg(tmp_path)
    assert capin.server_takes_agent_token(cfg, KEY)  # no cluster yet
    derived = capin.agent_password(KEY)
    _server_file(
        cfg,
        "cred/passwd",
        f"spw,server,server,k3s:server\n{derived},node,node,k3s:agent\n".encode(),
    )
    assert capin.server_takes_agent_token(cfg, KEY)
    _server_file(cfg, "cred/passwd", b"spw,server,server,k3s:server\nspw,node,node,k3s:agent\n")
    assert not capin.server_takes_agent_token(cfg, KEY)  # k3s keeps the first node password


def test_peers_are_heard_servers_first_and_disagreement_is_an_alarm() -> None:
    assert capin.vote([]) == (None, "")
    pin, alarm = capin.vote([(A, True, True), (B, False, False), ("", False, True)])
    assert pin == Pin(A, "peers", True) and not alarm
    pin, alarm = capin.vote([(B, False, False)])
    assert pin == Pin(B, "peers", False)
    pin, alarm = capin.vote([(A, True, True), (B, True, True)])
    assert pin is None and "different cluster CAs" in alarm


def test_the_token_files_pin_wins_and_other_sources_raise_one_alarm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(tmp_path)
    (tmp_path / "token").write_text(f"K10{A}::server:{TOKEN}\n")
    pins = CaPin(cfg)
    pins.configured = capin.configured_hash(cfg)
    with caplog.at_level(logging.ERROR, logger="k3snoded.capin"):
        for _ in range(3):
            pins.learn(B, "datastore")
    assert pins.pin.ca_hash == A and pins.pin.source == "token file"
    assert len(caplog.records) == 1 and B in caplog.text
    assert pins.status()["alarms"]
    pins.learn(A, "datastore")
    assert not pins.status()["alarms"]


def test_a_server_with_another_ca_than_the_fleets_alarms_and_keeps_the_fleets(
    tmp_path: Path,
) -> None:
    pins = CaPin(_cfg(tmp_path))
    pins.learn(A, "peers")
    assert pins.pin == Pin(A, "peers")
    pins.learn(A, "datastore")
    pins.learn(B, "k3s")
    assert pins.pin.ca_hash == A and pins.pin.source == "datastore"
    assert any("this server's cluster CA hash" in a for a in pins.status()["alarms"])
    pins.learn(B, "peers")  # peers never override the datastore
    assert pins.pin.ca_hash == A


@pytest.fixture
async def ds(tmp_path: Path) -> AsyncIterator[Datastore]:
    store = open_datastore(
        DatastoreConfig(endpoint=""), CoordinationConfig(), sqlite_path=tmp_path / "k3snoded.db"
    )
    await prepare(store)
    try:
        yield store
    finally:
        await store.close()


async def test_the_fleet_flags_insert_once_and_never_overwrite(
    tmp_path: Path, ds: Datastore
) -> None:
    first, second = _cfg(tmp_path / "1"), _cfg(tmp_path / "2")
    for cfg, ca in ((first, A), (second, B)):
        _server_file(cfg, "token", f"K10{ca}::server:pw\n".encode())
    pins = CaPin(first)
    await capin.claim_agent_token(pins, ds, first, KEY)  # a new cluster: the agent token
    assert pins.pin.agent_token
    assert await capin.publish(pins, ds, first)
    assert pins.pin == Pin(A, "datastore", True)

    # A second server whose k3s has another CA (a cluster that diverged): an alarm, and the
    # fleet's hash stays.
    other = CaPin(second)
    capin.learn_flags(other, await ds.flags())
    assert await capin.publish(other, ds, second)
    assert (await ds.flags())[capin.CA_HASH_FLAG] == A
    assert other.pin.ca_hash == A and other.status()["alarms"]

    # An agent reads what the servers published.
    agent = CaPin(replace(first, node=replace(first.node, name="n3")))
    capin.learn_flags(agent, await ds.flags())
    assert agent.pin == Pin(A, "datastore", True)
    # Another machine that would have kept its own node password finds the flag taken.
    _server_file(second, "cred/passwd", b"spw,server,server,k3s:server\nspw,node,node,k3s:agent\n")
    await capin.claim_agent_token(other, ds, second, KEY)
    assert other.pin.agent_token

    # Not yet readable (k3s has not written its files): nothing published, try again later.
    assert not await capin.publish(CaPin(_cfg(tmp_path / "3")), ds, _cfg(tmp_path / "3"))


def test_a_rewritten_datastore_flag_is_vetoed_by_what_servers_sign(tmp_path: Path) -> None:
    """Datastore credentials can rewrite the ca_hash flag, not sign announcements: a fleet
    member joins only when the flag and the servers' signed word agree."""
    pins = CaPin(_cfg(tmp_path))
    pins.learn(B, "datastore")  # the flag, rewritten
    pins.check_peers([(A, True, True), (A, True, True)])
    assert pins.pin.ca_hash == "" and pins.vetoed
    assert any("servers announce" in a for a in pins.status()["alarms"])
    pins.check_peers([])  # nobody announces (no discovery): the flag is all there is
    assert pins.pin.ca_hash == B
    pins.learned = Pin(A, "datastore")
    pins.check_peers([(A, True, True)])
    assert pins.pin.ca_hash == A and not pins.status()["alarms"]


def test_a_machine_announces_only_what_it_knows_first_hand(tmp_path: Path) -> None:
    pins = CaPin(_cfg(tmp_path))
    pins.learn(A, "peers")
    assert pins.announced_hash == ""  # never hearsay
    pins.learn(A, "datastore")
    assert pins.announced_hash == A
    pins.learn(B, "k3s")  # a server announces the CA it serves, even against the fleet's
    assert pins.announced_hash == B and pins.pin.ca_hash == A


def test_alarms_are_a_metric(tmp_path: Path) -> None:
    from k3snoded.metrics import render_metrics

    pins = CaPin(_cfg(tmp_path))
    assert "k3snoded_ca_pin_alarms 0.0" in render_metrics({"ca_pin": pins.status()})
    pins.learn(A, "datastore")
    pins.learn(B, "k3s")
    assert "k3snoded_ca_pin_alarms 1.0" in render_metrics({"ca_pin": pins.status()})


async def test_a_cluster_taken_over_keeps_its_node_password(tmp_path: Path, ds: Datastore) -> None:
    """The first k3snoded server of a cluster a plain k3s install created: its k3s already has
    a node password, which k3s keeps in its datastore; changing it would make k3s refuse to
    start ("passwd newer than datastore"). So the fleet records that it has no agent token."""
    cfg = _cfg(tmp_path)
    _server_file(cfg, "cred/passwd", b"spw,server,server,k3s:server\nspw,node,node,k3s:agent\n")
    pins = CaPin(cfg)
    await capin.claim_agent_token(pins, ds, cfg, KEY)
    assert not pins.pin.agent_token
    assert (await ds.flags())[capin.AGENT_TOKEN_FLAG] == capin.AGENT_TOKEN_NONE
