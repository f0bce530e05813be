"""Discovery that cannot start yet (the node's address is not on an interface: DHCP or the
network not up at boot) is retried; it does not end the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from k3snoded.config import ClusterConfig, Config, DiscoveryConfig, NodeConfig
from k3snoded.model import Peer
from k3snoded.peers import PeerBook

ABSENT = "198.18.0.99"  # on no interface of the root namespace: binding to it fails, no packet


async def test_mdns_that_cannot_start_is_retried_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("k3snoded.peers.RETRY_FIRST", 0.2)
    token = tmp_path / "token"
    token.write_text("peers-test-token-0123456789abcdef\n")
    token.chmod(0o600)
    cfg = Config(
        cluster=ClusterConfig(name="lab", token_file=token),
        node=NodeConfig(name="n1", address=ABSENT, interface="eth0"),
        discovery=DiscoveryConfig(mdns=True),
        source=tmp_path / "config.yaml",
    )
    book = PeerBook(cfg, local=lambda: Peer("n1", "lab", (ABSENT,), 6480))
    caplog.set_level(logging.INFO, logger="k3snoded.peers")
    task = asyncio.create_task(book.run())
    try:
        await asyncio.sleep(1.5)
        assert not task.done(), task.exception() if task.done() else ""
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await book.close()
    failures = [r for r in caplog.records if "mDNS discovery cannot start" in r.getMessage()]
    assert len(failures) == 1  # logged once, retried quietly


async def test_a_poke_announces_a_change_at_once_not_at_the_next_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first server's CA hash reaches the agents through its announcement: a change of
    what this machine announces goes out when the role loop says so, not up to a check later."""
    monkeypatch.setattr("k3snoded.peers.REANNOUNCE_CHECK", 60.0)  # only a poke can do it in time
    token = tmp_path / "token"
    token.write_text("peers-test-token-0123456789abcdef\n")
    token.chmod(0o600)
    cfg = Config(
        cluster=ClusterConfig(name="lab", token_file=token),
        node=NodeConfig(name="n1", address="127.0.0.1", interface="lo"),
        discovery=DiscoveryConfig(mdns=False, seeds=("http://127.0.0.1:9",)),
        source=tmp_path / "config.yaml",
    )
    me = Peer("n1", "lab", ("127.0.0.1",), 6480)
    book = PeerBook(cfg, local=lambda: me)
    task = asyncio.create_task(book.run())
    try:
        for _ in range(100):
            if book.seeds is not None:
                break
            await asyncio.sleep(0.01)
        assert book.seeds is not None
        me = Peer("n1", "lab", ("127.0.0.1",), 6480, ca_hash="sha256:" + "ab" * 32)
        book.poke()
        for _ in range(100):
            if book.seeds._local == me:
                break
            await asyncio.sleep(0.01)
        assert book.seeds._local == me  # told to the seeds within a second, not a minute
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await book.close()
