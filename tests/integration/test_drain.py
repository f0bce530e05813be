"""Cordon, drain, uncordon (k3snoded/drain.py) against the stand-in's API: evictions honour
disruption budgets, DaemonSet and mirror pods stay, the drain is bounded in time; the gateway
goes through the local apiserver when it can, else through ``remote``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from k3snoded.config import Config, K3sConfig, NodeConfig
from k3snoded.drain import KubeGateway, drain
from k3snoded.kube import KubeClient, KubeError
from k3snoded.model import Role
from tests.fake_k3s.client import admin, get, request
from tests.fake_k3s.harness import Launcher, new_node

__all__ = ["k3s"]

from tests.fake_k3s.conftest import k3s


def _pod(name: str, node: str, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, **meta}, "spec": {"nodeName": node}}


def _node(url: str, n: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        reply = get(f"{url}/api/v1/nodes/s1", cert=admin(n.server_dir))
        if reply.status == 200:
            found: dict[str, Any] = json.loads(reply.body)
            return found
        assert time.monotonic() < deadline, reply
        time.sleep(0.2)


def test_drain_evicts_what_it_may_and_gives_up_in_time(k3s: Launcher, tmp_path: Path) -> None:
    n = new_node(tmp_path, "s1")
    s = k3s.start(n.server_args("--token", "pw"), n.env)
    s.wait_log("k3s is up and running")
    url = f"https://127.0.0.1:{n.port}"
    cert = admin(n.server_dir)
    _node(url, n)
    pods = [
        _pod("web-1", "s1", labels={"app": "web"}),
        _pod("ds-1", "s1", ownerReferences=[{"kind": "DaemonSet", "name": "ds", "uid": "1"}]),
        _pod("static-1", "s1", annotations={"kubernetes.io/config.mirror": "abc"}),
        _pod("db-1", "s1", labels={"app": "db"}),
        _pod("other-1", "s2", labels={"app": "web"}),
    ]
    for pod in pods:
        r = request("POST", f"{url}/api/v1/namespaces/default/pods", body=pod, cert=cert)
        assert r.status == 201
    pdb = {
        "metadata": {"name": "db"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "db"}}},
    }
    r = request(
        "POST",
        f"{url}/apis/policy/v1/namespaces/default/poddisruptionbudgets",
        body=pdb,
        cert=cert,
    )
    assert r.status == 201
    cfg = Config(node=NodeConfig(name="s1"), k3s=K3sConfig(data_dir=n.data_dir))
    client = KubeClient(cfg, url)
    t0 = time.monotonic()
    result = asyncio.run(drain(client, "s1", limit=2.0))
    took = time.monotonic() - t0
    assert result.evicted == ("default/web-1",)
    assert result.left == ("default/db-1",)  # its budget allows no disruption
    assert 2.0 <= took < 10.0
    assert "gave up" in result.sentence("s1")
    left = json.loads(get(f"{url}/api/v1/namespaces/default/pods", cert=cert).body)["items"]
    assert sorted(p["metadata"]["name"] for p in left) == ["db-1", "ds-1", "other-1", "static-1"]
    assert _node(url, n)["spec"]["unschedulable"] is True


def test_gateway_local_and_remote(k3s: Launcher, tmp_path: Path) -> None:
    n = new_node(tmp_path, "s1")
    s = k3s.start(n.server_args("--token", "pw"), n.env)
    s.wait_log("k3s is up and running")
    url = f"https://127.0.0.1:{n.port}"
    _node(url, n)
    cfg = Config(
        node=NodeConfig(name="s1"),
        k3s=K3sConfig(data_dir=n.data_dir, server_args=("--https-listen-port", str(n.port))),
    )
    asked: list[dict[str, Any]] = []

    async def remote(req: dict[str, Any]) -> str:
        asked.append(req)
        return "done elsewhere"

    local = KubeGateway(lambda: cfg, lambda: Role.SERVER, lambda: True, remote)
    assert asyncio.run(local.run("cordon", "s1")) == "cordoned s1"
    assert _node(url, n)["spec"]["unschedulable"] is True
    assert asyncio.run(local.run("drain", "s1", 5.0)) == "drained s1: evicted 0 pod(s)"
    assert asyncio.run(local.run("uncordon", "s1")) == "uncordoned s1"
    assert "unschedulable" not in _node(url, n)["spec"]
    assert asked == []
    # Not ready here (or no certificate): a ready server is asked instead; never both.
    elsewhere = KubeGateway(lambda: cfg, lambda: Role.SERVER, lambda: False, remote)
    assert asyncio.run(elsewhere.run("drain", "a1", 3.0)) == "done elsewhere"
    assert asked == [{"op": "drain", "node": "a1", "timeout": 3.0}]
    with pytest.raises(KubeError):
        asyncio.run(elsewhere.run("drain", "a1", 3.0, forward=False))
