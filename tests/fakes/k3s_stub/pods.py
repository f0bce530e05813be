"""Pods, PodDisruptionBudgets and evictions: what ``kubectl drain`` (and k3snoded's drain) use.

The stand-in runs no kubelet and no containers: a pod is an object only, created through the
API by a test (as a controller would), bound to a node by ``spec.nodeName``. Stored in the kine
table under the keys kube-apiserver uses (``/registry/pods/<ns>/<name>``,
``/registry/poddisruptionbudgets/<ns>/<name>``).

* ``GET /api/v1/pods?fieldSelector=spec.nodeName=<node>``: the pods bound to a node, every
  namespace (``kubectl drain``'s list); ``GET/POST /api/v1/namespaces/<ns>/pods[/<name>]``,
  ``DELETE`` of one.
* ``POST /api/v1/namespaces/<ns>/pods/<name>/eviction`` (policy/v1 ``Eviction``): **429**
  ``TooManyRequests`` "Cannot evict pod as it would violate the pod's disruption budget." when a
  PodDisruptionBudget selecting the pod allows no disruption, else 201 and the pod is deleted.
  A real pod then terminates within its grace period before the object goes; without a kubelet
  the object goes at once.
* ``POST/GET /apis/policy/v1/namespaces/<ns>/poddisruptionbudgets``: ``spec.minAvailable`` or
  ``spec.maxUnavailable`` (integers) and ``spec.selector.matchLabels``; every pod counts as
  healthy.
* Only ``system:masters`` may do any of this here (a kubelet's own pods are not modelled).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from aiohttp import web

from tests.fakes.k3s_stub.datastore import Store

POD_PREFIX = "/registry/pods/"
PDB_PREFIX = "/registry/poddisruptionbudgets/"


def _status(code: int, reason: str, message: str, **extra: Any) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
        **extra,
    }
    return web.json_response(body, status=code)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Pods:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _all(self, prefix: str) -> list[dict[str, Any]]:
        out = []
        for key in sorted(await self.store.list(prefix)):
            found = await self.store.revision(key)
            if found is None:
                continue
            obj: dict[str, Any] = json.loads(found[1])
            obj["metadata"]["resourceVersion"] = str(found[0])
            out.append(obj)
        return out

    async def pods(self, namespace: str = "", node: str = "") -> list[dict[str, Any]]:
        prefix = POD_PREFIX + (f"{namespace}/" if namespace else "")
        found = await self._all(prefix)
        return [p for p in found if not node or (p.get("spec") or {}).get("nodeName") == node]

    async def create(self, prefix: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.pop("resourceVersion", None)
        if prefix == POD_PREFIX:
            obj.setdefault("status", {"phase": "Running"})
        key = f"{prefix}{namespace}/{meta.get('name', '')}"
        if not await self.store.create(key, json.dumps(obj, sort_keys=True).encode()):
            raise FileExistsError(key)
        return obj

    async def delete(self, namespace: str, name: str) -> bool:
        key = f"{POD_PREFIX}{namespace}/{name}"
        if await self.store.get(key) is None:
            return False
        await self.store.delete(key)
        return True

    async def blocking_budget(self, pod: dict[str, Any]) -> str | None:
        """The name of a PodDisruptionBudget that allows no disruption of ``pod``, or None."""
        namespace = pod["metadata"]["namespace"]
        labels = pod["metadata"].get("labels") or {}
        peers = await self.pods(namespace)
        for pdb in await self._all(f"{PDB_PREFIX}{namespace}/"):
            spec = pdb.get("spec") or {}
            match = (spec.get("selector") or {}).get("matchLabels") or {}
            if not match or any(labels.get(k) != v for k, v in match.items()):
                continue
            healthy = sum(
                1
                for p in peers
                if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in match.items())
            )
            if "maxUnavailable" in spec:
                allowed = int(spec["maxUnavailable"])
            else:
                allowed = healthy - int(spec.get("minAvailable", 0))
            if allowed <= 0:
                return str(pdb["metadata"]["name"])
        return None


def _list(kind: str, items: list[dict[str, Any]], api: str = "v1") -> web.Response:
    return web.json_response({"kind": kind, "apiVersion": api, "items": items})


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def route(
    request: web.Request,
    api: Pods | None,
    who: tuple[str, tuple[str, ...]],
    path: str,
    ready: bool,
) -> web.StreamResponse:
    """``/api/v1/pods``, ``/api/v1/namespaces/<ns>/pods...``, the policy/v1 budgets."""
    if api is None or not ready:
        return _status(503, "ServiceUnavailable", "the server is currently unable to handle it")
    if "system:masters" not in who[1]:
        return _status(403, "Forbidden", f'User "{who[0]}" cannot access {path}')
    parts = path.strip("/").split("/")
    method = request.method
    if parts[:3] == ["api", "v1", "pods"] and len(parts) == 3 and method == "GET":
        selector = request.query.get("fieldSelector", "")
        node = selector.split("=", 1)[1] if selector.startswith("spec.nodeName=") else ""
        return _list("PodList", await api.pods(node=node))
    if parts[:3] == ["apis", "policy", "v1"] and len(parts) == 6:
        namespace, resource = parts[4], parts[5]
        if resource != "poddisruptionbudgets":
            return _status(404, "NotFound", "the server could not find the requested resource")
        if method == "GET":
            return _list(
                "PodDisruptionBudgetList",
                await api._all(f"{PDB_PREFIX}{namespace}/"),
                "policy/v1",
            )
        body = await _body(request)
        if method != "POST" or body is None:
            return _status(400, "BadRequest", "a PodDisruptionBudget object is required")
        try:
            return web.json_response(await api.create(PDB_PREFIX, namespace, body), status=201)
        except FileExistsError:
            return _status(409, "AlreadyExists", "poddisruptionbudgets already exists")
    if parts[:3] != ["api", "v1", "namespaces"] or len(parts) < 5 or parts[4] != "pods":
        return _status(404, "NotFound", "the server could not find the requested resource")
    namespace = parts[3]
    if len(parts) == 5:
        if method == "GET":
            return _list("PodList", await api.pods(namespace))
        body = await _body(request)
        if method != "POST" or body is None:
            return _status(400, "BadRequest", "a Pod object is required")
        try:
            return web.json_response(await api.create(POD_PREFIX, namespace, body), status=201)
        except FileExistsError:
            name = (body.get("metadata") or {}).get("name", "")
            return _status(409, "AlreadyExists", f'pods "{name}" already exists')
    name = parts[5]
    found = [p for p in await api.pods(namespace) if p["metadata"].get("name") == name]
    if not found:
        return _status(404, "NotFound", f'pods "{name}" not found')
    if len(parts) == 6 and method == "GET":
        return web.json_response(found[0])
    if len(parts) == 6 and method == "DELETE":
        await api.delete(namespace, name)
        return web.json_response(found[0])
    if len(parts) == 7 and parts[6] == "eviction" and method == "POST":
        budget = await api.blocking_budget(found[0])
        if budget is not None:
            return _status(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
                details={"causes": [{"reason": "DisruptionBudget", "message": budget}]},
            )
        await api.delete(namespace, name)
        return _status(201, "", "")
    return _status(405, "MethodNotAllowed", f"{method} is not supported on {path}")
