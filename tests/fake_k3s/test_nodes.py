"""Node objects and the minimal /api/v1/nodes (tests/fakes/README.md, "nodes" rows): taints
only at creation, role labels only ever added, merge patches with optimistic concurrency."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.fake_k3s.client import admin, get, request
from tests.fake_k3s.harness import Launcher, Node, new_node

TAINT = {"key": "k3s-controlplane", "value": "true", "effect": "NoExecute"}
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"


def _node(n: Node, name: str, timeout: float = 15.0) -> dict[str, Any]:
    url = f"https://127.0.0.1:{n.port}/api/v1/nodes/{name}"
    deadline = time.monotonic() + timeout
    while True:
        reply = get(url, cert=admin(n.server_dir))
        if reply.status == 200:
            found: dict[str, Any] = json.loads(reply.body)
            if CONTROL_PLANE in found["metadata"]["labels"] or time.monotonic() > deadline:
                return found
        assert time.monotonic() < deadline, reply
        time.sleep(0.2)


def test_server_node_has_create_time_taints_and_role_labels(k3s: Launcher, tmp_path: Path) -> None:
    n = new_node(tmp_path, "s1")
    args = ["--token", "pw", "--node-taint", "k3s-controlplane=true:NoExecute"]
    s = k3s.start(n.server_args(*args, "--node-label", "tier=gold"), n.env)
    s.wait_log("k3s is up and running")
    node = _node(n, "s1")
    assert node["spec"]["taints"] == [TAINT]
    labels = node["metadata"]["labels"]
    assert labels[CONTROL_PLANE] == "true" and labels["node-role.kubernetes.io/master"] == "true"
    assert labels["tier"] == "gold" and labels["kubernetes.io/hostname"] == "s1"
    assert get(f"https://127.0.0.1:{n.port}/api/v1/nodes").status == 401  # no client cert
    # Restarted without the taint: the existing Node keeps it (kubelet registerWithTaints).
    s.signal()
    assert s.wait_exit(15) == 0
    s = k3s.start(n.server_args("--token", "pw"), n.env)
    s.wait_log("labels have been set successfully on node")
    assert _node(n, "s1")["spec"]["taints"] == [TAINT]


def test_merge_patch_removes_taints_and_labels_with_optimistic_concurrency(
    k3s: Launcher, tmp_path: Path
) -> None:
    n = new_node(tmp_path, "s1")
    s = k3s.start(
        n.server_args("--token", "pw", "--node-taint", "k3s-controlplane=true:NoExecute"), n.env
    )
    s.wait_log("k3s is up and running")
    node = _node(n, "s1")
    url = f"https://127.0.0.1:{n.port}/api/v1/nodes/s1"
    version = node["metadata"]["resourceVersion"]
    patch = {
        "metadata": {"resourceVersion": version, "labels": {CONTROL_PLANE: None}},
        "spec": {"taints": []},
    }
    merge = "application/merge-patch+json"
    reply = request("PATCH", url, body=patch, content_type=merge, cert=admin(n.server_dir))
    assert reply.status == 200, reply
    after = json.loads(reply.body)
    assert after["spec"]["taints"] == [] and CONTROL_PLANE not in after["metadata"]["labels"]
    assert after["metadata"]["resourceVersion"] != version
    # The same patch again is stale now: 409 Conflict, nothing changed.
    stale = request("PATCH", url, body=patch, content_type=merge, cert=admin(n.server_dir))
    assert stale.status == 409 and json.loads(stale.body)["reason"] == "Conflict"
    json_patch = request(
        "PATCH", url, body=[], content_type="application/json-patch+json", cert=admin(n.server_dir)
    )
    assert json_patch.status in (400, 415)
    # PUT with the current version replaces the object.
    current = json.loads(get(url, cert=admin(n.server_dir)).body)
    current["metadata"]["labels"]["tier"] = "silver"
    put = request("PUT", url, body=current, cert=admin(n.server_dir))
    assert put.status == 200 and json.loads(put.body)["metadata"]["labels"]["tier"] == "silver"
    missing = get(f"https://127.0.0.1:{n.port}/api/v1/nodes/nope", cert=admin(n.server_dir))
    assert missing.status == 404


def test_agent_registers_its_node_and_cannot_change_it(k3s: Launcher, tmp_path: Path) -> None:
    srv = new_node(tmp_path, "s1")
    s = k3s.start(srv.server_args("--token", "pw"), srv.env)
    s.wait_log("k3s is up and running")
    agent = new_node(tmp_path, "a1")
    a = k3s.start(
        [
            "agent",
            "--server",
            f"https://127.0.0.1:{srv.port}",
            "--token",
            "pw",
            "--lb-server-port",
            str(agent.port),
            "--node-name",
            "worker-1",
            "--node-taint",
            "dedicated=db:NoSchedule",
        ],
        agent.env,
    )
    a.wait_log("k3s agent is up and running")
    node = json.loads(
        get(f"https://127.0.0.1:{srv.port}/api/v1/nodes/worker-1", cert=admin(srv.server_dir)).body
    )
    assert node["spec"]["taints"] == [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
    assert CONTROL_PLANE not in node["metadata"]["labels"]
    kubelet = (
        agent.data_dir / "agent/client-kubelet.crt",
        agent.data_dir / "agent/client-kubelet.key",
    )
    url = f"https://127.0.0.1:{srv.port}/api/v1/nodes/worker-1"
    assert get(url, cert=kubelet).status == 200
    denied = request(
        "PATCH",
        url,
        body={"spec": {"taints": []}},
        content_type="application/merge-patch+json",
        cert=kubelet,
    )
    assert denied.status == 403
