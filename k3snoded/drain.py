"""Cordon, drain and uncordon a node through the Kubernetes API (what ``kubectl drain`` does),
bounded in time.

* **cordon**: ``spec.unschedulable`` true (a merge patch); **uncordon**: false.
* **drain**: cordon, then evict (policy/v1 ``Eviction``) every pod bound to the node except
  DaemonSet pods (their controller would put them back at once) and mirror (static) pods,
  and wait until they are gone. An eviction a PodDisruptionBudget refuses (429) is retried
  every few seconds. After ``timeout`` seconds the drain gives up and says which pods remain;
  the caller goes on: stopping k3s does not stop the pods left (containerd's shims keep them
  running), so a drain is a courtesy to workloads, not a precondition for safety.

``KubeGateway`` chooses the way in: this machine's own apiserver (a server) or its agent load
balancer, with the admin client certificate k3s wrote here; a machine without one (an agent
that never was a server) asks a ready server to do it through the signed peer API (``remote``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from k3snoded.config import Config
from k3snoded.kube import MERGE_PATCH, KubeClient, KubeError, api_url
from k3snoded.model import Role

log = logging.getLogger(__name__)

EVICT_RETRY = 5.0  # seconds between attempts at an eviction a budget refused
POLL = 1.0  # seconds between checks that evicted pods are gone

Remote = Callable[[dict[str, Any]], Awaitable[str]]


@dataclass(frozen=True)
class DrainResult:
    evicted: tuple[str, ...]
    left: tuple[str, ...]  # still on the node when the drain gave up

    def sentence(self, node: str) -> str:
        if not self.left:
            return f"drained {node}: evicted {len(self.evicted)} pod(s)"
        shown = ", ".join(self.left[:5]) + (" ..." if len(self.left) > 5 else "")
        return (
            f"drain of {node} gave up after the timeout: evicted {len(self.evicted)} pod(s), "
            f"{len(self.left)} left ({shown}); they keep running"
        )


def _name(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def evictable(pod: dict[str, Any]) -> bool:
    """Whether a drain evicts ``pod``: not a DaemonSet's, not a mirror pod, not going away."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
        return False
    owners = meta.get("ownerReferences") or []
    return not any(isinstance(o, dict) and o.get("kind") == "DaemonSet" for o in owners)


async def cordon(client: KubeClient, node: str, unschedulable: bool) -> str:
    status, _ = await client.call(
        "PATCH",
        f"/api/v1/nodes/{quote(node)}",
        {"spec": {"unschedulable": True if unschedulable else None}},
        MERGE_PATCH,
    )
    if status != 200:
        raise KubeError(f"cannot {'cordon' if unschedulable else 'uncordon'} {node}: HTTP {status}")
    return f"{'cordoned' if unschedulable else 'uncordoned'} {node}"


async def _pods_on(client: KubeClient, node: str) -> list[dict[str, Any]]:
    status, answer = await client.call(
        "GET", f"/api/v1/pods?fieldSelector={quote('spec.nodeName=' + node)}"
    )
    if status != 200:
        raise KubeError(f"cannot list the pods of {node}: HTTP {status}")
    return [p for p in answer.get("items") or [] if isinstance(p, dict)]


async def drain(client: KubeClient, node: str, limit: float) -> DrainResult:
    """Cordon ``node`` and evict its pods, for at most ``limit`` seconds."""
    await cordon(client, node, True)
    deadline = _now() + limit
    evicted: set[str] = set()
    retry_at: dict[str, float] = {}
    while True:
        pods = [p for p in await _pods_on(client, node) if evictable(p)]
        if not pods:
            return DrainResult(tuple(sorted(evicted)), ())
        now = _now()
        if now >= deadline:
            return DrainResult(tuple(sorted(evicted)), tuple(sorted(_name(p) for p in pods)))
        for pod in pods:
            name = _name(pod)
            if name in evicted or retry_at.get(name, 0.0) > now:
                continue
            namespace, _, pod_name = name.partition("/")
            body = {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": pod_name, "namespace": namespace},
            }
            path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod_name)}/eviction"
            status, answer = await client.call("POST", path, body)
            if status in (200, 201, 404):
                evicted.add(name)
            elif status == 429:
                retry_at[name] = now + EVICT_RETRY
                log.info("eviction of %s refused for now: %s", name, answer.get("message", ""))
            else:
                raise KubeError(f"eviction of {name}: HTTP {status}: {answer.get('message', '')}")
        await asyncio.sleep(min(POLL, max(0.0, deadline - _now())))


class KubeGateway:
    """Cordon / drain / uncordon any node, from this machine or through a ready server."""

    def __init__(
        self,
        cfg: Callable[[], Config],
        role: Callable[[], Role],
        ready: Callable[[], bool],
        remote: Remote | None = None,
    ) -> None:
        self._cfg = cfg
        self._role = role
        self._ready = ready
        self._remote = remote

    async def _local(self) -> KubeClient | None:
        role = self._role()
        if role is Role.NONE or not self._ready():
            return None
        client = KubeClient(self._cfg(), api_url(self._cfg(), role), timeout=15.0)
        return client if await asyncio.to_thread(client.credentials) else None

    async def run(self, op: str, node: str, limit: float = 0.0, *, forward: bool = True) -> str:
        """``op`` is cordon, uncordon or drain; a sentence saying what was done."""
        client = await self._local()
        if client is None:
            if not forward or self._remote is None:
                raise KubeError("no ready local apiserver with the admin certificate here")
            return await self._remote({"op": op, "node": node, "timeout": limit})
        if op == "drain":
            return (await drain(client, node, limit)).sentence(node)
        if op in ("cordon", "uncordon"):
            return await cordon(client, node, op == "cordon")
        raise KubeError(f"unknown operation {op!r}")


def _now() -> float:
    """The event loop's clock (the simulator's virtual time under tests/sim)."""
    return asyncio.get_running_loop().time()
