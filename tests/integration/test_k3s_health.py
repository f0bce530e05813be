"""The supervised stand-in k3s and what k3snoded takes for its health (issue 11).

A server is healthy when its apiserver answers ``/readyz`` with the admin client certificate
(the datastore is part of that check), not when the static ``/ping`` answers. An agent is
never killed for not being ready: a real agent waits for the apiserver for as long as it
takes (and gives up by itself after 15 minutes).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3snoded.capin import Pin, write_join_token
from k3snoded.config import ClusterConfig, Config, K3sConfig, NodeConfig
from k3snoded.k3s import child_spec, install_token_file
from k3snoded.model import ChildState, Role
from k3snoded.supervisor import Supervisor
from tests.fake_k3s.harness import TcpProxy
from tests.integration.children.kit import REPO, Tracker, free_port, wait_status

FAKE_K3S = REPO / "tests" / "fakes" / "k3s"
TOKEN = "fake-cluster-token-health-7d2a"


@pytest.fixture
def root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="k3sn-h-", dir="/tmp") as d:
        yield Path(d)


def _config(
    root: Path, *, server_args: tuple[str, ...] = (), ready_timeout: float = 60.0
) -> Config:
    token = root / "etc-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    data_dir = root / "k3s"
    data_dir.mkdir()
    # The knobs go in a file: k3snoded scrubs K3S_* from k3s's environment. A long renew
    # deadline: this lone server leads, and the test is about /readyz, not about its exit.
    (data_dir / "fake-k3s.env").write_text(
        f"K3S_FAKE_ROOT={root}\nK3S_FAKE_DATASTORE_LOSS_EXIT=300\nK3S_FAKE_SHUTDOWN_DELAY=1\n"
    )
    return Config(
        cluster=ClusterConfig(name="t", token_file=token),
        node=NodeConfig(
            name="fake-h", address="127.0.0.1", state_dir=root / "state", run_dir=root / "run"
        ),
        k3s=K3sConfig(
            binary=FAKE_K3S,
            data_dir=data_dir,
            server_args=server_args,
            ready_timeout=ready_timeout,
            stop_timeout=15.0,
        ),
    )


async def test_server_health_follows_readyz_not_ping(
    root: Path, tracker: Tracker, mysql_dsn: str
) -> None:
    """Cut the server from its datastore: /ping still answers, /readyz fails, so the
    supervisor reports it not ready (the VIP leaves it) and does not kill it."""
    proxy = TcpProxy(("127.0.0.1", 3306))
    endpoint = mysql_dsn.replace("127.0.0.1:3306", f"127.0.0.1:{proxy.port}")
    port = free_port()
    cfg = _config(
        root,
        server_args=(
            "--https-listen-port",
            str(port),
            "--bind-address",
            "127.0.0.1",
            "--datastore-endpoint",
            endpoint,
        ),
    )
    install_token_file(cfg)
    spec = child_spec(cfg, Role.SERVER, "", base_env=os.environ)
    sup = Supervisor("k3s", cfg.node.run_dir, ready_probe_interval=0.2)
    tracker.watch(sup)
    sup.want(spec)
    task = asyncio.create_task(sup.run())
    try:
        ready = await wait_status(sup, lambda s: s.ready, timeout=40)
        proxy.block()
        lost = await wait_status(sup, lambda s: not s.ready, timeout=15)
        assert lost.pid == ready.pid and lost.state is ChildState.READY
        proxy.unblock()
        back = await wait_status(sup, lambda s: s.ready, timeout=20)
        assert back.pid == ready.pid and back.restarts == 0
    finally:
        await asyncio.wait_for(sup.shutdown(), 30)
        await task
        proxy.cut()


async def test_an_agent_is_not_killed_for_not_being_ready(root: Path, tracker: Tracker) -> None:
    """An agent that cannot become ready (here: nothing answers its registration address; in
    the field: the datastore is down, so the apiserver's /readyz fails) keeps running past
    k3s.ready_timeout instead of being killed and restarted every ready_timeout."""
    cfg = _config(root, ready_timeout=1.5)
    pin = Pin("ab" * 32, "datastore")  # an agent is started with a pin (capin.py)
    cfg.node.state_dir.mkdir(parents=True, exist_ok=True)
    write_join_token(cfg, pin, b"")
    spec = child_spec(cfg, Role.AGENT, "127.0.0.1", base_env=os.environ, pin=pin)
    sup = Supervisor("k3s", cfg.node.run_dir, ready_probe_interval=0.2)
    tracker.watch(sup)
    sup.want(spec)
    task = asyncio.create_task(sup.run())
    try:
        first = await wait_status(sup, lambda s: s.pid is not None, timeout=10)
        await asyncio.sleep(6.0)
        now = sup.status
        assert now.pid == first.pid and now.restarts == 0, now.message
        assert now.state is ChildState.STARTING and not now.ready
    finally:
        await asyncio.wait_for(sup.shutdown(), 30)
        await task
