"""Taints and role labels that follow this node's role, through the Kubernetes API.

k3s applies ``--node-taint`` (``servers.dedicated``'s ``k3s-controlplane=true:NoExecute``) only
when the kubelet first creates the Node object, and only ever *adds* the control-plane role
labels. So after a role change a promoted agent never gets the dedicated taint and a demoted
server keeps ``NoExecute`` and its ``node-role.kubernetes.io/control-plane`` label for ever.

``NodeRoleKeeper`` reconciles this machine's own Node once its k3s is ready in a role (and
after every change of role, of ``servers.dedicated`` or of the node name): the dedicated taint
present exactly on a server of a dedicated fleet, the control-plane labels removed from an
agent. It talks to the apiserver with the admin client certificate k3s writes under
``<data-dir>/server/tls`` (a demoted server keeps those files; a machine that never was a
server has none and has nothing to undo): on a server through its own listener, on an agent
through the agent's load balancer (``127.0.0.1:<lb-server-port>``). Every change is one JSON
merge patch carrying the ``resourceVersion`` it was computed from (409 → read and retry), so
it is idempotent and never overwrites a concurrent change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from k3snoded import httpc, k3s
from k3snoded.config import Config
from k3snoded.model import Role
from k3snoded.process import ChildStatus

log = logging.getLogger("k3snoded.kube")

DEDICATED = {"key": "k3s-controlplane", "value": "true", "effect": "NoExecute"}
ROLE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
AGENT_LB_PORT = 6444  # k3s agent --lb-server-port default
MERGE_PATCH = "application/merge-patch+json"
MAX_ANSWER = 64 << 20  # a pod list of a large node; anything bigger is not an apiserver's answer


class KubeError(Exception):
    """The apiserver could not be reached or refused the request."""


class Conflict(KubeError):
    """409: the Node changed since it was read."""


@dataclass(frozen=True)
class Target:
    """What this node's Node object should look like, and how to reach the apiserver."""

    node: str
    role: Role
    dedicated: bool
    url: str  # https://host:port (no path)


def _is_dedicated(taint: Any) -> bool:
    return isinstance(taint, dict) and taint.get("key") == DEDICATED["key"]


def node_patch(node: dict[str, Any], role: Role, dedicated: bool) -> dict[str, Any] | None:
    """The merge patch that makes ``node`` fit ``role`` (None when it already does). Pure.

    The dedicated taint is present iff ``role`` is SERVER and ``dedicated``; an AGENT carries
    no control-plane role label. Other taints and labels are left as they are.
    """
    meta = node.get("metadata") or {}
    labels = meta.get("labels") or {}
    taints = list((node.get("spec") or {}).get("taints") or [])
    kept = [t for t in taints if not _is_dedicated(t)]
    wanted = [*kept, dict(DEDICATED)] if role is Role.SERVER and dedicated else kept
    patch: dict[str, Any] = {}
    if wanted != taints:
        patch["spec"] = {"taints": wanted}
    if role is Role.AGENT:
        stale = {name: None for name in ROLE_LABELS if name in labels}
        if stale:
            patch["metadata"] = {"labels": stale}
    if not patch:
        return None
    patch.setdefault("metadata", {})["resourceVersion"] = str(meta.get("resourceVersion", ""))
    return patch


def _port_flag(args: tuple[str, ...], flag: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def api_url(cfg: Config, role: Role) -> str:
    """Where this node reaches the apiserver: its own listener as a server, its load
    balancer as an agent."""
    if role is Role.SERVER:
        return k3s.server_ready_url(cfg).rsplit("/", 1)[0]
    port = _port_flag(cfg.k3s.agent_args, "--lb-server-port") or str(AGENT_LB_PORT)
    return f"https://127.0.0.1:{port}"


def target(cfg: Config, role: Role) -> Target:
    return Target(cfg.node.name, role, cfg.servers.dedicated, api_url(cfg, role))


class KubeClient:
    """GET and merge-PATCH of one Node, with the admin client certificate. One request at a
    time; a fresh TLS context per use (k3s may rotate the certificate files)."""

    def __init__(self, cfg: Config, url: str, timeout: float = 10.0) -> None:
        self.tls = k3s.admin_tls(cfg)
        self.url = url
        self.timeout = timeout

    def credentials(self) -> bool:
        return self.tls.cert.exists() and self.tls.key.exists() and self.tls.ca.exists()

    async def _request(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        status, answer = await self.call(method, path, body, MERGE_PATCH)
        if status == 409:
            raise Conflict(f"{method} {path}: 409 Conflict")
        if status != 200:
            raise KubeError(f"{method} {path}: HTTP {status}: {_message(answer)}")
        return answer

    async def call(
        self, method: str, path: str, body: object = None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        """One request; the status and the JSON answer ({} when it is not JSON). KubeError
        only when the apiserver cannot be reached."""
        try:
            ctx = await asyncio.to_thread(self.tls.context)
        except OSError as exc:
            raise KubeError(f"cannot load the admin certificate: {exc}") from exc
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        try:
            resp = await httpc.request(
                method,
                self.url + path,
                body=data or b"",
                headers=headers,
                timeout=self.timeout,
                ssl_context=ctx,
                max_body=MAX_ANSWER,
            )
        except (OSError, TimeoutError) as exc:
            raise KubeError(f"{method} {path}: {exc or type(exc).__name__}") from exc
        text, status = resp.text(), resp.status
        try:
            answer = json.loads(text)
        except ValueError:
            if 200 <= status < 300:
                raise KubeError(f"{method} {path}: not JSON") from None
            answer = {"message": text[:200].strip()}
        return status, answer if isinstance(answer, dict) else {}

    async def node(self, name: str) -> dict[str, Any]:
        return await self._request("GET", f"/api/v1/nodes/{name}")

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._request("PATCH", f"/api/v1/nodes/{name}", patch)


async def reconcile(client: KubeClient, want: Target, attempts: int = 5) -> str:
    """Make the Node fit ``want``; a sentence saying what changed (or that nothing had to)."""
    for _ in range(attempts):
        node = await client.node(want.node)
        patch = node_patch(node, want.role, want.dedicated)
        if patch is None:
            return f"node {want.node} already fits role {want.role.value}"
        try:
            await client.patch_node(want.node, patch)
        except Conflict:
            continue  # changed meanwhile: read it again
        return f"node {want.node} updated for role {want.role.value}: {_describe(patch)}"
    raise KubeError(f"node {want.node} kept changing; {attempts} conflicts in a row")


def _message(answer: dict[str, Any]) -> str:
    return str(answer.get("message") or answer.get("reason") or "no message")[:200]


def _describe(patch: dict[str, Any]) -> str:
    parts = []
    if "spec" in patch:
        has = any(_is_dedicated(t) for t in patch["spec"]["taints"])
        parts.append(("added" if has else "removed") + " taint k3s-controlplane=true:NoExecute")
    removed = [k for k, v in (patch.get("metadata", {}).get("labels") or {}).items() if v is None]
    if removed:
        parts.append("removed label(s) " + ", ".join(removed))
    return "; ".join(parts)


class NodeRoleKeeper:
    """Reconciles this node's taints and role labels after its k3s became ready in a role.

    Level-triggered: ``child_changed`` (a supervisor ``on_change`` callback) wakes it; it acts
    once per target (node name, role, ``servers.dedicated``) and retries a failure with
    backoff, logging a repeated failure once.
    """

    def __init__(
        self,
        cfg: Callable[[], Config],
        role: Callable[[], Role],
        status: Callable[[], ChildStatus],
    ) -> None:
        self._cfg = cfg
        self._role = role
        self._status = status
        self._kick = asyncio.Event()
        self.done: Target | None = None
        self._failed = ""

    def child_changed(self, _status: ChildStatus) -> None:
        self._kick.set()

    def _wanted(self) -> Target | None:
        role = self._role()
        if role is Role.NONE or not self._status().ready:
            return None
        return target(self._cfg(), role)

    async def run(self) -> None:
        delay = 2.0
        while True:
            want = self._wanted()
            wait = 30.0
            if want is not None and want != self.done:
                if await self._once(want):
                    delay = 2.0
                else:
                    wait, delay = delay, min(delay * 2, 60.0)
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), wait)

    async def _once(self, want: Target) -> bool:
        client = KubeClient(self._cfg(), want.url)
        if not await asyncio.to_thread(client.credentials):
            # Never a server here: k3s never tainted or labelled this node for a role.
            log.debug("no admin certificate under %s: nothing to reconcile", client.tls.cert)
            self.done = want
            return True
        try:
            sentence = await reconcile(client, want)
        except KubeError as err:
            if str(err) != self._failed:
                log.warning(
                    "cannot reconcile node %s for role %s: %s; retrying",
                    want.node,
                    want.role.value,
                    err,
                )
                self._failed = str(err)
            return False
        self._failed = ""
        self.done = want
        log.info("%s", sentence)
        return True
