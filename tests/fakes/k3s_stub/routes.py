"""The supervisor listener's HTTP routes (pkg/server/handlers/router.go), served over TLS."""

from __future__ import annotations

import base64
import binascii
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.k3s_stub import COMMIT, GO_VERSION, VERSION, logs, nodes, pods, tls

UNAUTHORIZED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}


# pkg/server/handlers/router.go: the groups each kind of /v1-k3s route accepts.
AGENT_GROUPS = ("k3s:agent", "system:nodes", "system:bootstrappers:k3s:default-node-token")
SERVER_GROUPS = ("k3s:server",)
SERVER_ROUTES = frozenset({"server-bootstrap"})  # (token, encrypt/*, cert/cacerts: not emulated)


class _BadCredentials(Exception):
    """Basic auth with an unknown user or a wrong password (``invalid username/password``)."""


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
    datastore_ok: Callable[[], Awaitable[bool]] | None = None
    nodes: nodes.Nodes | None = None
    pods: pods.Pods | None = None
    ready: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def ca_pem(self) -> bytes:
        return (self.server_dir / "tls" / "server-ca.crt").read_bytes()


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def client_identity(request: web.Request) -> tuple[str, tuple[str, ...]] | None:
    """(CN, organisations) of a verified client certificate, or None (x509 authentication)."""
    transport = request.transport
    ssl_obj = transport.get_extra_info("ssl_object") if transport is not None else None
    cert = ssl_obj.getpeercert() if ssl_obj is not None else None
    if not cert:
        return None
    cn, orgs = "", []
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                cn = value
            elif name == "organizationName":
                orgs.append(value)
    return cn, tuple(orgs)


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
        # Static: k3s's supervisor answers it while the process lives (handlers.go Ping).
        return web.Response(body=b"pong", headers={"Content-Type": "text/plain"})

    async def cacerts(_request: web.Request) -> web.Response:
        return web.Response(body=state.ca_pem(), content_type="text/plain")

    def groups(request: web.Request) -> tuple[str, ...] | None:
        """The authenticator (``pkg/authenticator``): Basic auth against ``cred/passwd`` (user
        ``server`` is in group k3s:server only, ``node`` in k3s:agent; the node password is the
        agent token when one is given), else a verified client certificate's organisations.
        None: not authenticated. Raises ``_BadCredentials`` for a wrong user or password."""
        creds = _basic_auth(request)
        if creds is not None:
            user, pw = creds
            if user == "server" and pw == state.server_pw:
                return ("k3s:server", "system:authenticated")
            if user == "node" and pw == state.node_pw:
                return ("k3s:agent", "system:authenticated")
            raise _BadCredentials
        who = client_identity(request)
        return None if who is None else who[1]

    def authorized(request: web.Request, allowed: tuple[str, ...]) -> web.Response | None:
        """``auth.doAuth``: an authentication error is 401 ``not authorized``; no credentials, or
        none of the route's groups, is 403 ``forbidden``. None: go on."""
        try:
            found = groups(request)
        except _BadCredentials:
            return _send_error(request, 401, "Unauthorized", "not authorized")
        if found is None or not set(found) & set(allowed):
            return _send_error(request, 403, "Forbidden", "forbidden")
        return None

    async def agent_route(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        # router.go: server-only routes first (k3s:server), then the agents' (k3s:agent, a
        # kubelet's system:nodes, or a bootstrap token's group).
        allowed = SERVER_GROUPS if name in SERVER_ROUTES else AGENT_GROUPS
        refused = authorized(request, allowed)
        if refused is not None:
            return refused
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
        if name == "client-kubelet.crt":
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
            cert, key = tls.issue_client(state.server_dir, f"system:node:{node}", "system:nodes")
            return web.Response(body=cert + key)
        if name == "serving-kubelet.crt":
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
            peer = request.remote or "unknown"
            logs.warning(
                f"Received HTTP bootstrap request from {peer}, but embedded etcd is not enabled."
            )
            return _send_error(request, 400, "Bad Request", "etcd disabled")
        return web.Response(status=404, text="404 page not found\n")

    async def kube(request: web.Request) -> web.StreamResponse:
        # Anonymous auth is off on the apiserver: everything needs a client certificate.
        who = client_identity(request)
        if who is None:
            return web.json_response(UNAUTHORIZED, status=401)
        path = request.path.rstrip("/")
        if path in ("/readyz", "/healthz"):
            return await _readyz(state)
        if path == "/livez":
            return web.Response(text="ok")
        if path == "/version":
            return web.json_response(version_info())
        if path.startswith(("/api/v1/pods", "/api/v1/namespaces/", "/apis/policy/v1/")):
            return await pods.route(request, state.pods, who, path, state.ready)
        if path == "/api/v1/nodes" or path.startswith("/api/v1/nodes/"):
            return await _nodes(request, state, who, path[len("/api/v1/nodes") :].strip("/"))
        return _status(404, "NotFound", "the server could not find the requested resource")

    app.router.add_get("/ping", ping)
    app.router.add_get("/cacerts", cacerts)
    app.router.add_route("*", "/v1-k3s/{name}", agent_route)
    app.router.add_route("*", "/{tail:.*}", kube)
    return app


def version_info() -> dict[str, str]:
    """kube-apiserver ``/version``: k3s builds it with its release name as ``gitVersion``."""
    core = VERSION.lstrip("v").split("+")[0].split("-")[0].split(".")
    return {
        "major": core[0],
        "minor": core[1] if len(core) > 1 else "",
        "gitVersion": VERSION,
        "gitCommit": COMMIT,
        "gitTreeState": "clean",
        "buildDate": "2024-12-10T00:00:00Z",
        "goVersion": GO_VERSION,
        "compiler": "gc",
        "platform": f"linux/{nodes._arch()}",
    }


_HOOK = "[+]poststarthook/start-apiserver-admission-initializer ok\n"


async def _readyz(state: ServerState) -> web.Response:
    """kube-apiserver /readyz: 200 ``ok`` or 500 with the failed checks (etcd included)."""
    if not state.ready:
        body = (
            "[+]ping ok\n[+]log ok\n[+]etcd ok\n"
            "[-]poststarthook/start-apiserver-admission-initializer failed: not finished\n"
            "readyz check failed\n"
        )
        return web.Response(status=500, text=body)
    ok = state.datastore_ok is None or await state.datastore_ok()
    if ok:
        return web.Response(text="ok")
    body = f"[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n{_HOOK}readyz check failed\n"
    return web.Response(status=500, text=body)


def _may(who: tuple[str, tuple[str, ...]], verb: str, name: str, sub: str = "") -> bool:
    cn, orgs = who
    if "system:masters" in orgs:
        return True
    # The node authorizer: a kubelet reads and creates its own Node object and updates its
    # status; nothing else.
    if "system:nodes" not in orgs or cn != f"system:node:{name}":
        return False
    return verb in ("get", "create") or (sub == "status" and verb in ("patch", "update"))


async def _nodes(
    request: web.Request, state: ServerState, who: tuple[str, tuple[str, ...]], name: str
) -> web.StreamResponse:
    if state.nodes is None or not state.ready:
        return _status(503, "ServiceUnavailable", "the server is currently unable to handle it")
    name, _, sub = name.partition("/")
    if sub not in ("", "status"):
        return _status(404, "NotFound", "the server could not find the requested resource")
    method = request.method
    verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update"}.get(
        method, "patch"
    )
    body: Any = None
    if method in ("POST", "PUT", "PATCH"):
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _status(400, "BadRequest", "the request body is not valid JSON")
        if not isinstance(body, dict):
            return _status(400, "BadRequest", "the request body must be a JSON object")
        if method == "POST":
            name = str((body.get("metadata") or {}).get("name", ""))
    if not _may(who, verb, name, sub):
        resource = f"nodes/{sub}" if sub else "nodes"
        return _status(
            403,
            "Forbidden",
            f'nodes "{name}" is forbidden: User "{who[0]}" cannot {verb} resource "{resource}"',
        )
    if sub == "status" and body is not None:
        body = {"status": body.get("status") or {}}  # the status subresource changes only that
    try:
        if verb == "list":
            items = await state.nodes.list()
            return web.json_response({"kind": "NodeList", "apiVersion": "v1", "items": items})
        if verb == "get":
            return web.json_response(await state.nodes.get(name))
        if verb == "create":
            return web.json_response(await state.nodes.create(body), status=201)
        if verb == "update":
            return web.json_response(await state.nodes.replace(name, body))
        kind = request.headers.get("Content-Type", "").split(";")[0].strip()
        if kind not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            return _status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format ({kind}) - this stand-in"
                " accepts application/merge-patch+json and application/strategic-merge-patch+json",
            )
        return web.json_response(await state.nodes.patch(name, body))
    except nodes.NotFound:
        return _status(404, "NotFound", f'nodes "{name}" not found')
    except nodes.Conflict as exc:
        reason = "AlreadyExists" if "already exists" in str(exc) else "Conflict"
        return _status(409, reason, str(exc))
    except Exception as exc:  # the datastore failed under the apiserver
        return _status(500, "InternalError", f"Internal error occurred: {type(exc).__name__}")


def ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The listener's TLS; client certificates of ``client_ca`` are verified when offered."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=str(client_ca))
    return ctx


def dumps(obj: object) -> str:
    return json.dumps(obj)
