"""The supervisor listener's HTTP routes (pkg/server/handlers/router.go), served over TLS."""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.fakes.k3s_stub import logs

UNAUTHORIZED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}


class NodePasswordRejected(Exception):
    """The node password does not match the stored one for that node name."""


@dataclass
class ServerState:
    """What the routes need from the running server."""

    server_dir: Path
    server_pw: str
    node_pw: str
    https_port: int
    config: dict[str, object]
    apiservers: Callable[[], Awaitable[list[str]]]
    check_node_password: Callable[[str, str], Awaitable[None]]
    ready: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def ca_pem(self) -> bytes:
        return (self.server_dir / "tls" / "server-ca.crt").read_bytes()


def _ping_failing() -> bool:
    path = os.environ.get("K3S_FAKE_PING_FAIL_FILE", "")
    return bool(path) and os.path.exists(path)


def _basic_auth(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, pw


def _send_error(request: web.Request, status: int, reason: str, msg: str) -> web.Response:
    peer = request.remote or "unknown"
    logs.error(f"Sending HTTP/1.1 {status} response to {peer}: {msg}")
    return web.Response(status=status, text=msg + "\n", reason=reason)


def build_app(state: ServerState) -> web.Application:
    app = web.Application()

    async def ping(_request: web.Request) -> web.Response:
        if _ping_failing():
            return web.Response(status=503, text="apiserver not ready\n")
        return web.Response(body=b"pong", headers={"Content-Type": "text/plain"})

    async def cacerts(_request: web.Request) -> web.Response:
        return web.Response(body=state.ca_pem(), content_type="text/plain")

    def role(request: web.Request) -> str | None:
        creds = _basic_auth(request)
        if creds is None:
            return None
        user, pw = creds
        if user == "server" and pw == state.server_pw:
            return "k3s:server"
        if user == "node" and pw in (state.node_pw, state.server_pw):
            return "k3s:agent"
        return None

    def unauthorized() -> web.Response:
        return web.Response(status=401, text="Unauthorized\n", reason="Unauthorized")

    async def agent_route(request: web.Request) -> web.StreamResponse:
        who = role(request)
        if who is None:
            return unauthorized()
        name = request.match_info["name"]
        if name == "readyz":
            if not state.ready:
                return _send_error(request, 503, "Service Unavailable", "runtime core not ready")
            return web.Response(text="ok")
        if name == "config":
            return web.json_response(state.config)
        if name == "apiservers":
            return web.json_response(await state.apiservers())
        if name in ("server-ca.crt", "client-ca.crt"):
            return web.Response(body=(state.server_dir / "tls" / name).read_bytes())
        if name in ("serving-kubelet.crt", "client-kubelet.crt"):
            node = request.headers.get("k3s-Node-Name", "")
            node_pw = request.headers.get("k3s-Node-Password", "")
            if not node or not node_pw:
                return _send_error(request, 400, "Bad Request", "node name or password missing")
            try:
                await state.check_node_password(node, node_pw)
            except NodePasswordRejected:
                return _send_error(
                    request, 403, "Forbidden", f"unable to verify password for node {node}"
                )
            return web.Response(body=(state.server_dir / "tls" / "server-ca.crt").read_bytes())
        if name in ("client-kube-proxy.crt", "client-k3s-controller.crt"):
            return web.Response(body=state.ca_pem())
        if name == "server-bootstrap":
            if who != "k3s:server":
                return unauthorized()
            peer = request.remote or "unknown"
            logs.warning(
                f"Received HTTP bootstrap request from {peer}, but embedded etcd is not enabled."
            )
            return _send_error(request, 400, "Bad Request", "etcd disabled")
        return web.Response(status=404, text="404 page not found\n")

    async def kube(_request: web.Request) -> web.Response:
        # Anonymous auth is off on the apiserver: everything else needs credentials.
        return web.json_response(UNAUTHORIZED, status=401)

    app.router.add_get("/ping", ping)
    app.router.add_get("/cacerts", cacerts)
    app.router.add_route("*", "/v1-k3s/{name}", agent_route)
    app.router.add_route("*", "/{tail:.*}", kube)
    return app


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def dumps(obj: object) -> str:
    return json.dumps(obj)
