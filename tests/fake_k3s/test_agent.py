"""Agent contract (§3.3, §3.4): join, CA-hash loop, node password, load balancer fail-over."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import time
from pathlib import Path

from tests.fake_k3s.client import get
from tests.fake_k3s.conftest import Db
from tests.fake_k3s.harness import (
    K3s,
    Launcher,
    Node,
    TcpProxy,
    free_port,
    new_node,
    notify_socket,
)


def _server(
    k3s: Launcher, node: Node, *extra: str, ip: str = "127.0.0.1", env: dict[str, str] | None = None
) -> K3s:
    s = k3s.start(node.server_args("--token", "pw", *extra, ip=ip), {**node.env, **(env or {})})
    s.wait_log("k3s is up and running")
    return s


def _agent_args(server: str, token: str, lb_port: int, *extra: str) -> list[str]:
    return ["agent", "--server", server, "--token", token, "--lb-server-port", str(lb_port), *extra]


def test_agent_joins(k3s: Launcher, tmp_path: Path) -> None:
    srv = new_node(tmp_path, "s1")
    _server(k3s, srv)
    token = (srv.server_dir / "token").read_text().strip()
    agent = new_node(tmp_path, "a1")
    url = f"https://127.0.0.1:{srv.port}"
    with notify_socket(tmp_path / "n.sock") as (sock, name):
        a = k3s.start(
            _agent_args(url, token, agent.port, "--node-name", "worker-1"),
            {**agent.env, "NOTIFY_SOCKET": name},
        )
        sock.settimeout(20)
        assert sock.recv(100) == b"READY=1"
    log = a.log()
    assert "k3s agent is up and running" in log
    assert (
        f"Running load balancer k3s-agent-load-balancer 127.0.0.1:{agent.port} -> [] "
        f"[default: 127.0.0.1:{srv.port}]"
    ) in log
    lb_file = agent.data_dir / "agent/etc/k3s-agent-load-balancer.json"
    assert json.loads(lb_file.read_text()) == {
        "ServerURL": url,
        "ServerAddresses": [f"127.0.0.1:{srv.port}"],
    }
    pw_file = agent.root / "etc/rancher/node/password"
    assert re.fullmatch(r"[0-9a-f]{32}", pw_file.read_text().strip())
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    assert get(f"https://127.0.0.1:{agent.port}/ping").body == b"pong"
    a.signal()
    assert a.wait_exit(15) == 0


def test_ca_hash_mismatch_loops_every_two_seconds(k3s: Launcher, tmp_path: Path) -> None:
    srv = new_node(tmp_path, "s1")
    _server(k3s, srv)
    real = hashlib.sha256((srv.server_dir / "tls/server-ca.crt").read_bytes()).hexdigest()
    agent = new_node(tmp_path, "a1")
    url = f"https://127.0.0.1:{srv.port}"
    a = k3s.start(_agent_args(url, f"K10{'0' * 64}::server:pw", agent.port), agent.env)
    line = (
        f"Failed to validate connection to cluster at {url}: token CA hash does not match the "
        f"Cluster CA certificate hash: {'0' * 64} != {real}"
    )
    started = time.monotonic()
    a.wait_log(line, timeout=10, count=2)
    assert time.monotonic() - started >= 1.5
    assert "k3s agent is up and running" not in a.log()


def test_short_token_warns_and_wrong_password_is_401(k3s: Launcher, tmp_path: Path) -> None:
    srv = new_node(tmp_path, "s1")
    _server(k3s, srv)
    agent = new_node(tmp_path, "a1")
    url = f"https://127.0.0.1:{srv.port}"
    a = k3s.start(_agent_args(url, "wrong", agent.port), agent.env)
    a.wait_log("401 Unauthorized")
    log = a.log()
    assert "token does not include a CA hash" in log
    assert (
        "failed to retrieve configuration from server: "
        f"https://127.0.0.1:{agent.port}/v1-k3s/config: 401 Unauthorized"
    ) in log


def test_duplicate_hostname_is_rejected(k3s: Launcher, tmp_path: Path) -> None:
    srv = new_node(tmp_path, "s1")
    _server(k3s, srv)
    token = (srv.server_dir / "token").read_text().strip()
    url = f"https://127.0.0.1:{srv.port}"
    first, second = new_node(tmp_path, "a1"), new_node(tmp_path, "a2")
    a1 = k3s.start(_agent_args(url, token, first.port, "--node-name", "twin"), first.env)
    a1.wait_log("k3s agent is up and running")
    a2 = k3s.start(_agent_args(url, token, second.port, "--node-name", "twin"), second.env)
    a2.wait_log(
        "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' "
        "may not match server node-passwd entry, try enabling a unique node name with the "
        "--with-node-id flag"
    )
    assert "k3s agent is up and running" not in a2.log()
    # The same node coming back with its own password is accepted.
    a1.signal()
    assert a1.wait_exit(15) == 0
    again = k3s.start(_agent_args(url, token, first.port, "--node-name", "twin"), first.env)
    again.wait_log("k3s agent is up and running")


def _served_by(lb_port: int) -> int:
    cfg = get(f"https://127.0.0.1:{lb_port}/v1-k3s/config", auth=("node", "pw"))
    assert cfg.status == 200, cfg
    return int(json.loads(cfg.body)["HTTPSPort"])


def _wait_served_by(lb_port: int, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        try:
            seen = _served_by(lb_port)
        except (OSError, AssertionError):
            seen = -1
        if seen == port:
            return
        time.sleep(0.3)
    raise AssertionError(f"load balancer still serves from {seen}, expected {port}")


def test_load_balancer_fails_over(k3s: Launcher, tmp_path: Path) -> None:
    endpoint = f"sqlite://{tmp_path / 'shared.db'}"
    n1, n2 = new_node(tmp_path, "s1"), new_node(tmp_path, "s2")
    s1 = _server(k3s, n1, "--datastore-endpoint", endpoint, ip="127.0.0.2")
    s2 = _server(k3s, n2, "--datastore-endpoint", endpoint, ip="127.0.0.3")
    agent = new_node(tmp_path, "a1")
    url = f"https://127.0.0.2:{n1.port}"
    a = k3s.start(_agent_args(url, "pw", agent.port, "--node-name", "a1"), agent.env)
    a.wait_log("k3s agent is up and running")
    a.wait_log(
        "Updated load balancer k3s-agent-load-balancer server addresses -> "
        f"[127.0.0.2:{n1.port} 127.0.0.3:{n2.port}]",
        timeout=15,
    )
    _wait_served_by(agent.port, n1.port)
    # The active server dying moves new connections to the other one...
    s1.kill()
    _wait_served_by(agent.port, n2.port)
    assert f"Server 127.0.0.3:{n2.port}@PREFERRED->ACTIVE" in a.log()
    # ...and back when that one dies and the first is there again.
    s1 = _server(k3s, n1, "--datastore-endpoint", endpoint, ip="127.0.0.2")
    s2.kill()
    _wait_served_by(agent.port, n1.port)


def test_saved_server_list_is_reused(k3s: Launcher, tmp_path: Path) -> None:
    agent = new_node(tmp_path, "a1")
    url = f"https://127.0.0.9:{free_port()}"
    lb_file = agent.data_dir / "agent/etc/k3s-agent-load-balancer.json"
    lb_file.parent.mkdir(parents=True)
    lb_file.write_text(
        json.dumps({"ServerURL": url, "ServerAddresses": ["10.0.0.2:6443", "10.0.0.1:6443"]})
    )
    a = k3s.start(_agent_args(url, "pw", agent.port), agent.env)
    a.wait_log("Running load balancer")
    assert (
        f"127.0.0.1:{agent.port} -> [10.0.0.1:6443 10.0.0.2:6443] [default: 127.0.0.9:"
    ) in a.log()
    # A file written for another --server is replaced.
    other = new_node(tmp_path, "a2")
    other_file = other.data_dir / "agent/etc/k3s-agent-load-balancer.json"
    other_file.parent.mkdir(parents=True)
    other_file.write_text(
        json.dumps({"ServerURL": "https://x:6443", "ServerAddresses": ["10.0.0.1:6443"]})
    )
    b = k3s.start(_agent_args(url, "pw", other.port), other.env)
    b.wait_log("Running load balancer")
    assert json.loads(other_file.read_text()) == {"ServerURL": url, "ServerAddresses": []}


def test_agent_is_never_ready_while_the_datastore_is_down(
    k3s: Launcher, tmp_path: Path, shared_db: Db
) -> None:
    """An agent waits for the apiserver's /readyz (which includes the datastore) before it is
    up: started during an outage it is not ready until the datastore is back (agent/run.go,
    util.WaitForAPIServerReady)."""
    port = 3306 if shared_db.kind == "mysql" else 5432
    proxy = TcpProxy(("127.0.0.1", port))
    endpoint = shared_db.endpoint.replace(f":{port}", f":{proxy.port}")
    srv = new_node(tmp_path, "s1")
    s = _server(
        k3s, srv, "--datastore-endpoint", endpoint, env={"K3S_FAKE_DATASTORE_LOSS_EXIT": "300"}
    )
    proxy.block()
    agent = new_node(tmp_path, "a1")
    url = f"https://127.0.0.1:{srv.port}"
    with notify_socket(tmp_path / "n.sock") as (sock, name):
        a = k3s.start(
            _agent_args(url, "pw", agent.port, "--node-name", "a1"),
            {**agent.env, "NOTIFY_SOCKET": name},
        )
        sock.settimeout(10)
        try:
            early = sock.recv(100)
        except TimeoutError:
            early = b""
        assert early == b"", a.log()
        assert "k3s agent is up and running" not in a.log()
        assert a.proc.poll() is None and s.proc.poll() is None
        proxy.unblock()
        sock.settimeout(30)
        assert sock.recv(100) == b"READY=1"
    a.wait_log("k3s agent is up and running")
