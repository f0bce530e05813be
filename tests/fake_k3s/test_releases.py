"""The version a stand-in release reports, as real k3s does (tests/fakes/README.md): its
``--version``, the apiserver's ``/version`` and the Node's ``status.nodeInfo.kubeletVersion``;
and pods, budgets and evictions (what a drain uses)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.fake_k3s.client import admin, get, request
from tests.fake_k3s.harness import Launcher, Node, free_port, new_node
from tests.fakes.releases import broken_release, release

NEW = "v1.31.5+k3s1"


def _install(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o755)
    return path


def _node_info(n: Node, name: str, want: str, timeout: float = 15.0) -> dict[str, Any]:
    url = f"https://127.0.0.1:{n.port}/api/v1/nodes/{name}"
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reply = get(url, cert=admin(n.server_dir))
        if reply.status == 200:
            info = json.loads(reply.body)["status"].get("nodeInfo") or {}
            if info.get("kubeletVersion") == want:
                return info
        time.sleep(0.2)
    raise AssertionError(f"{name}: nodeInfo {info}, want kubeletVersion {want}")


def test_a_release_reports_its_version_everywhere(k3s: Launcher, tmp_path: Path) -> None:
    old = k3s.start(["--version"])
    assert old.wait_exit() == 0
    assert old.stdout().startswith("k3s version v1.31.4+k3s1 (")
    binary = _install(tmp_path / "k3s-new", release(NEW))
    rc, out, _ = _run(binary, ["--version"])
    assert rc == 0 and out.splitlines()[0].startswith(f"k3s version {NEW} (")
    # The same node, restarted on the new binary: /version and the Node follow the binary.
    n = new_node(tmp_path, "s1")
    s = k3s.start(n.server_args("--token", "pw"), n.env)
    s.wait_log("labels have been set successfully")
    assert _node_info(n, "s1", "v1.31.4+k3s1")["kubeProxyVersion"] == "v1.31.4+k3s1"
    s.signal()
    assert s.wait_exit(15) == 0
    s = _start(k3s, binary, n.server_args("--token", "pw"), n.env)
    s.wait_log("labels have been set successfully")
    version = get(f"https://127.0.0.1:{n.port}/version", cert=admin(n.server_dir))
    assert version.status == 200
    assert json.loads(version.body)["gitVersion"] == NEW
    assert get(f"https://127.0.0.1:{n.port}/version").status == 401  # anonymous auth is off
    _node_info(n, "s1", NEW)
    # An agent on the new binary reports it in its own Node (kubelet status update).
    a = new_node(tmp_path, "a1")
    agent = _start(
        k3s,
        binary,
        [
            "agent",
            "--server",
            f"https://127.0.0.1:{n.port}",
            "--token",
            "pw",
            "--node-name",
            "a1",
            "--lb-server-port",
            str(free_port()),
        ],
        a.env,
    )
    agent.wait_log("k3s agent is up and running")
    _node_info(n, "a1", NEW)


def test_a_broken_release_reports_its_version_and_dies_at_start(tmp_path: Path) -> None:
    binary = _install(tmp_path / "k3s-bad", broken_release(NEW))
    rc, out, _ = _run(binary, ["--version"])
    assert rc == 0 and out.startswith(f"k3s version {NEW} ")
    rc, _, err = _run(binary, ["server"])
    assert rc == 2 and "panic:" in err


def test_evictions_honour_disruption_budgets(k3s: Launcher, tmp_path: Path) -> None:
    n = new_node(tmp_path, "s1")
    s = k3s.start(n.server_args("--token", "pw"), n.env)
    s.wait_log("k3s is up and running")
    base = f"https://127.0.0.1:{n.port}"
    cert = admin(n.server_dir)
    for name, node in (("web-1", "s1"), ("web-2", "s1"), ("db-1", "s2")):
        pod = {"metadata": {"name": name, "labels": {"app": name[:-2]}}, "spec": {"nodeName": node}}
        assert (
            request("POST", f"{base}/api/v1/namespaces/default/pods", body=pod, cert=cert).status
            == 201
        )
    pdb = {
        "metadata": {"name": "db"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}},
    }
    url = f"{base}/apis/policy/v1/namespaces/default/poddisruptionbudgets"
    assert request("POST", url, body=pdb, cert=cert).status == 201
    listed = get(f"{base}/api/v1/pods?fieldSelector=spec.nodeName%3Ds1", cert=cert)
    assert sorted(p["metadata"]["name"] for p in json.loads(listed.body)["items"]) == [
        "web-1",
        "web-2",
    ]
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "web-1", "namespace": "default"},
    }
    ev = request(
        "POST", f"{base}/api/v1/namespaces/default/pods/web-1/eviction", body=eviction, cert=cert
    )
    assert ev.status == 201
    blocked = request(
        "POST", f"{base}/api/v1/namespaces/default/pods/db-1/eviction", body=eviction, cert=cert
    )
    assert blocked.status == 429
    assert "disruption budget" in json.loads(blocked.body)["message"]
    left = json.loads(get(f"{base}/api/v1/namespaces/default/pods", cert=cert).body)["items"]
    assert sorted(p["metadata"]["name"] for p in left) == ["db-1", "web-2"]
    assert get(f"{base}/api/v1/pods").status == 401


def _run(binary: Path, args: list[str]) -> tuple[int, str, str]:
    import subprocess

    from tests.fake_k3s.harness import clean_env

    r = subprocess.run(
        [str(binary), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
        env=clean_env(),
    )
    return r.returncode, r.stdout, r.stderr


def _start(k3s: Launcher, binary: Path, args: list[str], env: dict[str, str]) -> Any:
    """Start ``binary`` (a release) instead of tests/fakes/k3s, ended by the launcher."""
    import subprocess

    from tests.fake_k3s.harness import K3s, clean_env

    n = len(k3s.started)
    out, err = k3s.logdir / f"rel-{n}.out", k3s.logdir / f"rel-{n}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([str(binary), *args], stdout=o, stderr=e, env=clean_env(env))
    started = K3s(proc, out, err)
    k3s.started.append(started)
    return started
