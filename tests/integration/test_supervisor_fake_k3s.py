"""The supervisor running the stand-in k3s from the command line k3s.py builds."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3snoded.config import ClusterConfig, Config, K3sConfig, NodeConfig
from k3snoded.k3s import child_spec, install_token_file
from k3snoded.model import ChildState, Role
from k3snoded.supervisor import Supervisor
from tests.integration.children.kit import (
    REPO,
    Tracker,
    daemon_then_sigkill,
    free_port,
    gone,
    wait_status,
    wait_until,
)

FAKE_K3S = REPO / "tests" / "fakes" / "k3s"
TOKEN = "fake-cluster-token-9c1d7e"

pytestmark = pytest.mark.skipif(not FAKE_K3S.exists(), reason="the stand-in k3s is missing")


@pytest.fixture
def root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="k3sn-fk-", dir="/tmp") as d:
        yield Path(d)


def _config(root: Path, port: int) -> Config:
    token = root / "etc-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    data_dir = root / "k3s"
    data_dir.mkdir()
    # The stand-in's knobs go in a file: k3snoded scrubs K3S_* from k3s's environment.
    (data_dir / "fake-k3s.env").write_text(f"K3S_FAKE_ROOT={root}\nK3S_FAKE_READY_DELAY=0.3\n")
    return Config(
        cluster=ClusterConfig(name="t", token_file=token),
        node=NodeConfig(
            name="fake-a", address="127.0.0.1", state_dir=root / "state", run_dir=root / "run"
        ),
        k3s=K3sConfig(
            binary=FAKE_K3S,
            data_dir=data_dir,
            server_args=("--https-listen-port", str(port), "--bind-address", "127.0.0.1"),
            ready_timeout=60.0,
            stop_timeout=10.0,
        ),
    )


async def test_stand_in_k3s_server_is_supervised_and_adopted(root: Path, tracker: Tracker) -> None:
    cfg = _config(root, free_port())
    install_token_file(cfg)
    env = {**os.environ, "K3S_URL": "https://198.18.0.99:6443", "K3S_TOKEN": "leaked"}
    spec = child_spec(cfg, Role.SERVER, "", base_env=env)
    assert spec.ready_url is not None and spec.ready_url.startswith("https://127.0.0.1:")

    # A first daemon starts k3s and is SIGKILLed; the next one adopts that same k3s.
    pid = await daemon_then_sigkill(cfg.node.run_dir, spec, tracker, name="k3s")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert TOKEN.encode() not in cmdline
    assert not [e for e in environ if e.startswith((b"K3S_URL=", b"K3S_TOKEN="))]

    sup = Supervisor("k3s", cfg.node.run_dir, ready_probe_interval=0.1)
    tracker.watch(sup)
    sup.want(spec)
    task = asyncio.create_task(sup.run())
    try:
        status = await wait_status(sup, lambda s: s.ready, timeout=30)
        assert status.adopted and status.pid == pid and status.state is ChildState.READY
    finally:
        await asyncio.wait_for(sup.shutdown(), 20)
        await task
    await wait_until("k3s to exit", lambda: gone(pid), 10)
    assert sup.status.state is ChildState.STOPPED
    assert not (cfg.node.run_dir / "k3s.pid").exists()
