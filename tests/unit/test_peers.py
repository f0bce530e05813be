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
