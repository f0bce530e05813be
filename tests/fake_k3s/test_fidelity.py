"""k3s v1.31 behaviours a supervisor runs into (tests/fakes/README.md, "fidelity" rows): the
admin certificate and /readyz, tokens, --log, the kubelet's label rule, a missing token file."""

from __future__ import annotations

import time
from pathlib import Path

from tests.fake_k3s.client import admin, get
from tests.fake_k3s.harness import Launcher, new_node, notify_socket


def test_readyz_needs_a_client_certificate(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "pw"), node.env)
    s.wait_log("k3s is up and running")
    url = f"https://127.0.0.1:{node.port}/readyz"
    assert get(url).status == 401
    ca = (node.server_dir / "tls/server-ca.crt").read_bytes()
    reply = get(url, cert=admin(node.server_dir), cadata=ca)  # the server verified, too
    assert (reply.status, reply.body) == (200, b"ok")
    crt = (node.server_dir / "tls/client-admin.crt").read_bytes()
    from cryptography import x509

    subject = x509.load_pem_x509_certificate(crt).subject.rfc4514_string()
    assert "CN=system:admin" in subject and "O=system:masters" in subject


def test_readyz_fails_until_the_apiserver_is_ready(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "pw"), {**node.env, "K3S_FAKE_READY_DELAY": "3"})
    s.wait_log("Wrote kubeconfig")
    url = f"https://127.0.0.1:{node.port}/readyz"
    reply = get(url, cert=admin(node.server_dir))
    assert reply.status == 500 and b"readyz check failed" in reply.body
    assert get(f"https://127.0.0.1:{node.port}/ping").body == b"pong"  # /ping says nothing
    s.wait_log("k3s is up and running", timeout=10)
    assert get(url, cert=admin(node.server_dir)).status == 200


def test_a_bootstrap_token_is_refused_by_a_server(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    for token in ("abcdef.0123456789abcdef", f"K10{'a' * 64}::abcdef.0123456789abcdef"):
        rc, _, err = k3s.run(node.server_args("--token", token), node.env)
        assert rc == 1
        assert (
            "failed to normalize server token; must be in format "
            "K10<CA-HASH>::<USERNAME>:<PASSWORD> or <PASSWORD>"
        ) in err


def test_a_missing_token_file_is_waited_for(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    token = tmp_path / "later" / "token"
    s = k3s.start(node.server_args("--token-file", str(token)), node.env)
    s.wait_log(f"Waiting for {token} to be available", timeout=10, count=2)
    assert s.proc.poll() is None
    token.parent.mkdir()
    token.write_text("pw\n")
    s.wait_log("k3s is up and running", timeout=15)
    assert (node.server_dir / "token").read_text().strip().endswith("::server:pw")


def test_log_flag_forks_and_the_parent_notifies_at_once(k3s: Launcher, tmp_path: Path) -> None:
    """--log: k3s re-executes itself writing to the file and its parent sends READY=1 as soon
    as the child started, long before k3s is up (cmds.forkIfLoggingOrReaping)."""
    node = new_node(tmp_path, "s1")
    logfile = tmp_path / "k3s.log"
    with notify_socket(tmp_path / "n.sock") as (sock, name):
        env = {**node.env, "NOTIFY_SOCKET": name, "K3S_FAKE_READY_DELAY": "4"}
        started = time.monotonic()
        s = k3s.start(node.server_args("--token", "pw", "--log", str(logfile)), env)
        sock.settimeout(10)
        assert sock.recv(100) == b"READY=1"
        assert time.monotonic() - started < 3.5
        assert "k3s is up and running" not in logfile.read_text(errors="replace")
        sock.settimeout(8)
        deadline = time.monotonic() + 15
        while "k3s is up and running" not in logfile.read_text(errors="replace"):
            assert time.monotonic() < deadline, logfile.read_text()
            time.sleep(0.2)
        try:
            extra = sock.recv(100)
        except TimeoutError:
            extra = b""
        assert extra == b"", "the child must not notify (NOTIFY_SOCKET= is empty)"
    assert s.log() == ""  # everything went to the file
    assert Path(f"/proc/{s.pid}/cmdline").read_bytes().rstrip(b"\0").endswith(b" init")


def test_kubelet_refuses_reserved_node_labels(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    bad = "node-role.kubernetes.io/worker=true"
    rc, _, err = k3s.run(
        node.server_args("--token", "pw", "--node-label", bad, "--node-label", "ok=1"), node.env
    )
    assert rc == 1
    assert (
        "unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels:"
        " [node-role.kubernetes.io/worker]"
    ) in err
    allowed = node.server_args(
        "--token", "pw", "--node-label", "node.kubernetes.io/pool=a", "--node-label", "x.io/y=z"
    )
    s = k3s.start(allowed, node.env)
    s.wait_log("labels have been set successfully on node")
