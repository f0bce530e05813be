"""Server contract (§2.3, §3.2, §4.1 SANs, §6.1, §6.2): tokens, listener, readiness, signals."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import signal
import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.fake_k3s.client import get, peer_cert
from tests.fake_k3s.harness import Launcher, new_node, notify_socket


def test_token_files_from_token_file(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    token_file = tmp_path / "tok"
    token_file.write_text("s3cret\n")
    s = k3s.start(node.server_args("--token-file", str(token_file), "--token", "ignored"), node.env)
    s.wait_log("k3s is up and running")
    sd = node.server_dir
    ca = get(f"https://127.0.0.1:{node.port}/cacerts").body
    assert ca == (sd / "tls/server-ca.crt").read_bytes()
    token = (sd / "token").read_text()
    assert token == f"K10{hashlib.sha256(ca).hexdigest()}::server:s3cret\n"
    assert stat.S_IMODE((sd / "token").stat().st_mode) == 0o600
    for link in ("agent-token", "node-token"):
        assert (sd / link).is_symlink()
        assert (sd / link).resolve() == (sd / "token").resolve()
    passwd = (sd / "cred/passwd").read_text()
    assert "s3cret,server,server,k3s:server" in passwd
    assert "s3cret,node,node,k3s:agent" in passwd
    assert f"Server node token is available at {sd / 'token'}" in s.log()
    kubeconfig = node.root / "etc/rancher/k3s/k3s.yaml"
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    assert f"https://127.0.0.1:{node.port}" in kubeconfig.read_text()


def test_generated_password_and_agent_token(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--agent-token", "agentpw"), node.env)
    s.wait_log("k3s is up and running")
    token = (node.server_dir / "token").read_text().strip()
    m = re.fullmatch(r"K10([0-9a-f]{64})::server:([0-9a-f]{32})", token)
    assert m, token
    agent_token = (node.server_dir / "agent-token").read_text().strip()
    assert agent_token == f"K10{m.group(1)}::node:agentpw"
    base = f"https://127.0.0.1:{node.port}/v1-k3s/config"
    assert get(base, auth=("node", "agentpw")).status == 200
    # The server user is in group k3s:server only, not an agent's (router.go, auth.go).
    assert get(base, auth=("server", m.group(2))).status == 403


def test_routes(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "pw"), node.env)
    s.wait_log("k3s is up and running")
    base = f"https://127.0.0.1:{node.port}"
    ping = get(base + "/ping")
    assert (ping.status, ping.body) == (200, b"pong")
    assert ping.content_type.startswith("text/plain")
    for path in ("/readyz", "/healthz", "/livez", "/version"):
        r = get(base + path)
        assert r.status == 401
        status = json.loads(r.body)
        assert status["kind"] == "Status"
        assert (status["message"], status["reason"], status["code"]) == (
            "Unauthorized",
            "Unauthorized",
            401,
        )
    # auth.go doAuth: no credentials is 403 forbidden; a wrong password is an error, 401.
    assert get(base + "/v1-k3s/config").status == 403
    assert get(base + "/v1-k3s/config", auth=("node", "wrong")).status == 401
    ready = get(base + "/v1-k3s/readyz", auth=("node", "pw"))
    assert (ready.status, ready.body) == (200, b"ok")
    assert json.loads(get(base + "/v1-k3s/apiservers", auth=("node", "pw")).body) == [
        f"127.0.0.1:{node.port}"
    ]
    cfg = json.loads(get(base + "/v1-k3s/config", auth=("node", "pw")).body)
    assert cfg["HTTPSPort"] == node.port
    ca = (node.server_dir / "tls/server-ca.crt").read_bytes()
    assert get(base + "/v1-k3s/server-ca.crt", auth=("node", "pw")).body == ca
    assert get(base + "/v1-k3s/client-ca.crt", auth=("node", "pw")).status == 200
    kubelet = get(
        base + "/v1-k3s/serving-kubelet.crt",
        auth=("node", "pw"),
        headers={"k3s-Node-Name": "n1", "k3s-Node-Password": "abc"},
    )
    assert kubelet.status == 200
    boot = get(base + "/v1-k3s/server-bootstrap", auth=("server", "pw"))
    assert (boot.status, boot.body.strip()) == (400, b"etcd disabled")


def test_readyz_503_until_ready(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    env = {**node.env, "K3S_FAKE_READY_DELAY": "2"}
    s = k3s.start(node.server_args("--token", "pw"), env)
    s.wait_log("Wrote kubeconfig")
    base = f"https://127.0.0.1:{node.port}"
    assert get(base + "/ping").status == 200
    r = get(base + "/v1-k3s/readyz", auth=("node", "pw"))
    assert (r.status, r.body.strip()) == (503, b"runtime core not ready")
    assert "k3s is up and running" not in s.log()
    s.wait_log("k3s is up and running", timeout=10)
    assert get(base + "/v1-k3s/readyz", auth=("node", "pw")).status == 200


def test_serving_certificate_sans(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    args = node.server_args("--tls-san", "vip.example,10.9.9.9", "--node-name", "alpha")
    s = k3s.start(args, node.env)
    s.wait_log("k3s is up and running")
    cert = x509.load_der_x509_certificate(peer_cert("127.0.0.1", node.port))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    assert {"vip.example", "localhost", "alpha", "kubernetes.default.svc"} <= dns
    assert {"10.9.9.9", "127.0.0.1", "::1", "10.43.0.1"} <= ips
    ca = (node.server_dir / "tls/server-ca.crt").read_bytes()
    # A verifying client accepts listed names and refuses anything else (the x509 failure
    # of a registration address missing from --tls-san).
    ctx = ssl.create_default_context(cadata=ca.decode())
    import socket

    for name, ok in (("vip.example", True), ("127.0.0.1", True), ("other.example", False)):
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as raw:
            if ok:
                ctx.wrap_socket(raw, server_hostname=name).close()
            else:
                with pytest.raises(ssl.SSLCertVerificationError):
                    ctx.wrap_socket(raw, server_hostname=name)
    assert ipaddress.ip_address("10.43.0.1")


@pytest.mark.parametrize("abstract", [False, True])
def test_ready_notification(k3s: Launcher, tmp_path: Path, abstract: bool) -> None:
    node = new_node(tmp_path, "s1")
    with notify_socket(None if abstract else tmp_path / "notify.sock") as (sock, name):
        env = {**node.env, "NOTIFY_SOCKET": name, "K3S_FAKE_READY_DELAY": "1"}
        started = time.monotonic()
        s = k3s.start(node.server_args("--token", "pw"), env)
        sock.settimeout(15)
        msg = sock.recv(4096)
        assert msg == b"READY=1"
        assert time.monotonic() - started >= 1.0
        assert "k3s is up and running" in s.log()


def test_sigterm_exits_zero_after_the_delayed_cancel(k3s: Launcher, tmp_path: Path) -> None:
    """k3s cancels its components through a 5 s delayed context (util.DelayCancel): a graceful
    stop takes at least 5 s, and the supervisor listener keeps answering meanwhile."""
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "pw"), node.env)
    s.wait_log("k3s is up and running")
    started = time.monotonic()
    s.signal(signal.SIGTERM)
    time.sleep(2.0)
    assert get(f"https://127.0.0.1:{node.port}/ping").body == b"pong"
    assert s.wait_exit(15) == 0
    assert 5.0 <= time.monotonic() - started < 9.0


def test_sigint_exits_zero(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "pw"), node.env)
    s.wait_log("k3s is up and running")
    s.signal(signal.SIGINT)
    assert s.wait_exit(15) == 0


def test_second_signal_exits_one(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "pw"), node.env)
    s.wait_log("k3s is up and running")
    s.signal(signal.SIGTERM)
    time.sleep(0.3)
    s.signal(signal.SIGTERM)
    assert s.wait_exit(15) == 1
    assert "Second shutdown signal received: terminated, exiting..." in s.log()


def test_argv_hidden(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "topsecret"), node.env)
    s.wait_log("k3s is up and running")
    cmdline = Path(f"/proc/{s.pid}/cmdline").read_bytes()
    assert b"topsecret" not in cmdline
    assert cmdline.rstrip(b"\0").endswith(b"k3s server")
    assert Path(f"/proc/{s.pid}/comm").read_text().strip() == "k3s-server"


def test_listen_port_in_use_is_fatal(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", node.port))
        busy.listen(1)
        rc, _, err = k3s.run(node.server_args("--token", "pw"), node.env)
    assert rc == 1
    assert "address already in use" in err


def test_kubeconfig_output_and_mode(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    out = tmp_path / "kube" / "admin.yaml"
    args = node.server_args("--token", "pw", "-o", str(out), "--write-kubeconfig-mode", "640")
    s = k3s.start(args, node.env)
    s.wait_log(f"Wrote kubeconfig {out}")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert f"server: https://127.0.0.1:{node.port}" in out.read_text()


def test_server_url_without_endpoint_tries_an_etcd_join(k3s: Launcher, tmp_path: Path) -> None:
    """K3S_URL leaking into a server makes it an etcd joiner: against a server without etcd,
    /v1-k3s/server-bootstrap answers 400 and the join is fatal."""
    first, second = new_node(tmp_path, "s1"), new_node(tmp_path, "s2")
    s1 = k3s.start(first.server_args("--token", "pw"), first.env)
    s1.wait_log("k3s is up and running")
    env = {**second.env, "K3S_URL": f"https://127.0.0.1:{first.port}"}
    rc, _, err = k3s.run(second.server_args("--token", "pw"), env)
    assert rc == 1
    assert "400 Bad Request" in err
    s1.wait_log("but embedded etcd is not enabled.")


def test_cluster_init_without_endpoint_runs_alone(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "pw", "--cluster-init"), node.env)
    s.wait_log("k3s is up and running")
    assert "embedded etcd is not emulated" in s.log()


def test_missing_datastore_tls_file_is_fatal(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    args = node.server_args(
        "--token",
        "pw",
        "--datastore-endpoint",
        "postgres://k3s:k3s@127.0.0.1:5432/k3s",
        "--datastore-cafile",
        str(tmp_path / "missing-ca.pem"),
    )
    rc, _, err = k3s.run(args, node.env)
    assert rc == 1
    assert f"open {tmp_path / 'missing-ca.pem'}: no such file or directory" in err


def test_with_node_id(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "pw", "--with-node-id"), node.env)
    s.wait_log("k3s is up and running")
    node_id = (node.root / "etc/rancher/node/id").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{8}", node_id)
    cert = x509.load_der_x509_certificate(peer_cert("127.0.0.1", node.port))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"s1-{node_id}" in san.get_values_for_type(x509.DNSName)
