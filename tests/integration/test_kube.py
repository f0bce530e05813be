"""k3snoded.kube against the stand-in k3s's /api/v1/nodes (real TLS, the admin certificate)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from k3snoded.config import Config, K3sConfig, NodeConfig, ServersConfig
from k3snoded.kube import DEDICATED, KubeClient, Target, reconcile
from k3snoded.model import Role
from tests.fake_k3s.client import admin, get
from tests.fake_k3s.harness import Launcher, new_node

__all__ = ["k3s"]

from tests.fake_k3s.conftest import k3s

CP = "node-role.kubernetes.io/control-plane"


def _wait_node(url: str, cert: tuple[Path, Path]) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while True:
        reply = get(url, cert=cert)
        if reply.status == 200:
            node: dict[str, object] = json.loads(reply.body)
            if CP in node["metadata"]["labels"]:  # type: ignore[index]
                return node
        assert time.monotonic() < deadline, reply
        time.sleep(0.2)


def test_demotion_and_promotion_are_reconciled(k3s: Launcher, tmp_path: Path) -> None:
    n = new_node(tmp_path, "s1")
    s = k3s.start(
        n.server_args("--token", "pw", "--node-taint", "k3s-controlplane=true:NoExecute"), n.env
    )
    s.wait_log("k3s is up and running")
    url = f"https://127.0.0.1:{n.port}"
    _wait_node(f"{url}/api/v1/nodes/s1", admin(n.server_dir))
    cfg = Config(
        node=NodeConfig(name="s1"),
        k3s=K3sConfig(data_dir=n.data_dir),
        servers=ServersConfig(dedicated=True),
    )
    client = KubeClient(cfg, url)
    assert client.credentials()

    demoted = asyncio.run(reconcile(client, Target("s1", Role.AGENT, True, url)))
    assert "removed taint" in demoted and CP in demoted
    node = json.loads(get(f"{url}/api/v1/nodes/s1", cert=admin(n.server_dir)).body)
    assert node["spec"]["taints"] == []
    assert CP not in node["metadata"]["labels"]
    again = asyncio.run(reconcile(client, Target("s1", Role.AGENT, True, url)))
    assert "already fits" in again  # idempotent: no second write

    promoted = asyncio.run(reconcile(client, Target("s1", Role.SERVER, True, url)))
    assert "added taint" in promoted
    node = json.loads(get(f"{url}/api/v1/nodes/s1", cert=admin(n.server_dir)).body)
    assert node["spec"]["taints"] == [DEDICATED]
