"""Token contract (§2.2, §2.5, §3.2, §3.3): CA-hash pinning, agent tokens, server-only routes.

k3s sources: ``pkg/clientaccess/token.go`` (an agent with a secure token compares the hash of
``/cacerts`` before it sends credentials), ``pkg/cli/server/server.go`` (``--agent-token``,
``--agent-token-file``), ``pkg/daemons/control/deps/deps.go`` ``genUsers`` (the ``node`` user's
password is the agent token when one is given), ``pkg/authenticator`` (Basic auth against
``cred/passwd``: a wrong password is an error, 401), ``pkg/server/auth/auth.go`` ``doAuth`` (no
credentials or a role without the route's group: 403 ``forbidden``) and
``pkg/server/handlers/router.go`` (``/v1-k3s/server-bootstrap`` needs ``k3s:server``).
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fake_k3s.client import get
from tests.fake_k3s.conftest import Db
from tests.fake_k3s.harness import K3s, Launcher, Node, new_node


class Recorder:
    """An HTTPS server with its own self-signed CA that records every request's credentials:
    what a stranger answering at the registration address sees."""

    def __init__(self, directory: Path) -> None:
        cert, key = directory / "rec.crt", directory / "rec.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "1", "-subj", "/CN=k3s", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.ca = cert.read_bytes()
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization)
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.seen.append((self.path, self.headers.get("Authorization")))
                body = recorder.ca if self.path == "/cacerts" else b"{}"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def credentials(self) -> list[str]:
        return [auth for _, auth in self.seen if auth]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    r = Recorder(tmp_path)
    try:
        yield r
    finally:
        r.close()


def _agent(k3s: Launcher, node: Node, server: str, token_file: Path) -> K3s:
    args = ["agent", "--server", server, "--token-file", str(token_file),
            "--lb-server-port", str(node.port), "--node-name", node.root.name]  # fmt: skip
    return k3s.start(args, node.env, name="agent")


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _server(k3s: Launcher, node: Node, db: Db, *extra: str) -> K3s:
    args = node.server_args("--token", "serverpw", "--datastore-endpoint", db.endpoint, *extra)
    s = k3s.start(args, node.env)
    s.wait_log("k3s is up and running", timeout=60)
    return s


def test_a_secure_token_agent_refuses_another_ca_before_sending_credentials(
    k3s: Launcher, tmp_path: Path, recorder: Recorder
) -> None:
    pinned = "ab" * 32
    agent = new_node(tmp_path, "a1")
    token = _secret(tmp_path / "token", f"K10{pinned}::node:agentpw")
    url = f"https://127.0.0.1:{recorder.port}"
    a = _agent(k3s, agent, url, token)
    served = hashlib.sha256(recorder.ca).hexdigest()
    a.wait_log(
        f"Failed to validate connection to cluster at {url}: token CA hash does not match the "
        f"Cluster CA certificate hash: {pinned} != {served}",
        timeout=15,
        count=2,
    )
    # Only unauthenticated requests: /cacerts, and its load balancer's /ping health checks.
    assert {path for path, _ in recorder.seen} <= {"/cacerts", "/ping"}
    assert "/cacerts" in {path for path, _ in recorder.seen}
    assert recorder.credentials() == []
    assert not (agent.data_dir / "agent" / "server-ca.crt").exists()

    # The same agent with a short token trusts that /cacerts and sends its password.
    a.kill()
    short = _secret(tmp_path / "short", "agentpw")
    b = _agent(k3s, new_node(tmp_path, "a2"), url, short)
    b.wait_log("token does not include a CA hash", timeout=15)
    deadline = time.monotonic() + 15
    while not recorder.credentials() and time.monotonic() < deadline:
        time.sleep(0.1)
    sent = {base64.b64decode(auth.split()[1]).decode() for auth in recorder.credentials()}
    assert sent == {"node:agentpw"}


def test_agents_join_with_the_agent_token_and_not_with_the_server_token(
    k3s: Launcher, tmp_path: Path, db: Db
) -> None:
    srv = new_node(tmp_path, "s1")
    agent_token = _secret(tmp_path / "agent-token-in", "agentpw")
    _server(k3s, srv, db, "--agent-token-file", str(agent_token))
    server_token = (srv.server_dir / "token").read_text().strip()
    written = (srv.server_dir / "agent-token").read_text().strip()
    ca_hash = hashlib.sha256((srv.server_dir / "tls/server-ca.crt").read_bytes()).hexdigest()
    assert written == f"K10{ca_hash}::node:agentpw"
    url = f"https://127.0.0.1:{srv.port}"

    joined = _agent(k3s, new_node(tmp_path, "a1"), url, _secret(tmp_path / "t1", written))
    joined.wait_log("k3s agent is up and running", timeout=30)

    # The server token's password is not the node user's password once an agent token exists.
    refused = _agent(k3s, new_node(tmp_path, "a2"), url, _secret(tmp_path / "t2", server_token))
    refused.wait_log("failed to retrieve configuration from server", timeout=20)
    assert "401 Unauthorized" in refused.log()
    assert "k3s agent is up and running" not in refused.log()


def test_the_agent_token_cannot_use_server_routes(k3s: Launcher, tmp_path: Path, db: Db) -> None:
    srv = new_node(tmp_path, "s1")
    s = _server(k3s, srv, db, "--agent-token", "agentpw")
    base = f"https://127.0.0.1:{srv.port}/v1-k3s"
    boot = base + "/server-bootstrap"
    agent = get(boot, auth=("node", "agentpw"))
    assert (agent.status, agent.body.strip()) == (403, b"forbidden")
    s.wait_log("Sending HTTP/1.1 403 response to 127.0.0.1:")
    assert ": forbidden" in s.log()
    assert get(boot).status == 403  # no credentials: not authenticated, so forbidden
    assert get(boot, auth=("node", "wrong")).status == 401  # a wrong password is an error
    assert get(boot, auth=("node", "serverpw")).status == 401
    server = get(boot, auth=("server", "serverpw"))
    assert (server.status, server.body.strip()) == (400, b"etcd disabled")
    # The agent token is an agent's credential; the server's is not an agent's.
    assert get(base + "/config", auth=("node", "agentpw")).status == 200
    assert get(base + "/config", auth=("server", "serverpw")).status == 403
