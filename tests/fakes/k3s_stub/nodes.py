"""Node objects: what the kubelet creates, what k3s adds later, and a minimal ``/api/v1/nodes``.

Stored in the kine table under ``/registry/minions/<name>`` (the key kube-apiserver uses), as
JSON; ``metadata.resourceVersion`` is the kine revision of the row.

* The kubelet creates its Node once, with ``--node-taint`` taints and ``--node-label`` labels
  (kubelet ``initialNode``); an existing Node keeps its taints (``registerWithTaints`` only
  applies at creation).
* k3s's agent then merges ``--node-label`` labels in (``updateMutableLabels``: add or change,
  never remove), and a server adds ``node-role.kubernetes.io/control-plane`` and ``.../master``
  (``setNodeLabelsAndAnnotations``): nothing in k3s ever removes them.
* The API: GET list/one, PUT (resourceVersion must match), PATCH with a JSON merge patch
  (RFC 7386; a strategic merge patch is the same for labels and taints, which have no patch
  strategy). Optimistic concurrency: a stale ``metadata.resourceVersion`` is 409 Conflict.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from collections.abc import Iterable
from typing import Any

from tests.fakes.k3s_stub import VERSION
from tests.fakes.k3s_stub.datastore import Store

PREFIX = "/registry/minions/"
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
MASTER = "node-role.kubernetes.io/master"

# kubelet ValidateKubeletFlags / kubeletapis.IsKubeletLabel
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
KUBELET_LABELS = (
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
)


class Conflict(Exception):
    """409: the object changed (stale resourceVersion) or already exists."""


class NotFound(Exception):
    """404: no such node."""


def _namespace(key: str) -> str:
    prefix, slash, _ = key.partition("/")
    return prefix if slash else ""


def _kubernetes_label(key: str) -> bool:
    ns = _namespace(key)
    return ns in ("kubernetes.io", "k8s.io") or ns.endswith((".kubernetes.io", ".k8s.io"))


def _kubelet_label(key: str) -> bool:
    if key in KUBELET_LABELS:
        return True
    ns = _namespace(key)
    return any(ns == a or ns.endswith("." + a) for a in KUBELET_LABEL_NAMESPACES)


def label_error(labels: Iterable[str]) -> str | None:
    """The kubelet's refusal of ``--node-labels`` in the reserved namespaces, or None."""
    keys = {lbl.partition("=")[0] for lbl in labels}
    unknown = sorted(k for k in keys if _kubernetes_label(k) and not _kubelet_label(k))
    if not unknown:
        return None
    return (
        "failed to validate kubelet flags: unknown 'kubernetes.io' or 'k8s.io' labels specified"
        f" with --node-labels: [{' '.join(unknown)}]\n--node-labels in the 'kubernetes.io'"
        " namespace must begin with an allowed prefix"
        f" ({', '.join(KUBELET_LABEL_NAMESPACES)}) or be in the specifically allowed set"
        f" ({', '.join(KUBELET_LABELS)})"
    )


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def parse_taints(items: Iterable[str]) -> list[dict[str, str]]:
    out = []
    for item in items:
        head, _, effect = item.rpartition(":")
        key, eq, value = head.partition("=")
        taint = {"key": key, "effect": effect}
        if eq:
            taint["value"] = value
        out.append(taint)
    return out


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def node_info() -> dict[str, str]:
    """``status.nodeInfo`` as this kubelet reports it: the versions are the binary's own (k3s
    builds kubelet and kube-proxy with its release name, e.g. ``v1.31.4+k3s1``)."""
    return {
        "kubeletVersion": VERSION,
        "kubeProxyVersion": VERSION,
        "containerRuntimeVersion": "containerd://1.7.23-k3s2",
        "operatingSystem": "linux",
        "architecture": _arch(),
    }


def new_node(name: str, labels: dict[str, str], taints: list[dict[str, str]]) -> dict[str, Any]:
    default = {
        "beta.kubernetes.io/arch": _arch(),
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": _arch(),
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "k3s",
    }
    node: dict[str, Any] = {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "labels": {**default, **labels},
            "annotations": {},
            "creationTimestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": {"taints": taints} if taints else {},
        "status": {"nodeInfo": node_info()},
    }
    return node


def _with_version(raw: bytes, revision: int) -> dict[str, Any]:
    node: dict[str, Any] = json.loads(raw)
    node.setdefault("metadata", {})["resourceVersion"] = str(revision)
    return node


def _encode(node: dict[str, Any]) -> bytes:
    clean = json.loads(json.dumps(node))
    clean.get("metadata", {}).pop("resourceVersion", None)
    return json.dumps(clean, sort_keys=True).encode()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class Nodes:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, name: str) -> dict[str, Any]:
        found = await self.store.revision(PREFIX + name)
        if found is None:
            raise NotFound(name)
        return _with_version(found[1], found[0])

    async def list(self) -> list[dict[str, Any]]:
        names = sorted(await self.store.list(PREFIX))
        out = []
        for key in names:
            try:
                out.append(await self.get(key[len(PREFIX) :]))
            except NotFound:
                continue
        return out

    async def create(self, node: dict[str, Any]) -> dict[str, Any]:
        name = str(node["metadata"]["name"])
        if not await self.store.create(PREFIX + name, _encode(node)):
            raise Conflict(f'nodes "{name}" already exists')
        return await self.get(name)

    async def replace(self, name: str, node: dict[str, Any]) -> dict[str, Any]:
        """PUT: the stored object becomes ``node``; its resourceVersion must be current."""
        wanted = str(node.get("metadata", {}).get("resourceVersion", ""))
        current = await self.get(name)
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise Conflict(_modified(name))
        node = json.loads(json.dumps(node))
        node.setdefault("metadata", {})["name"] = name
        revision = int(current["metadata"]["resourceVersion"])
        if await self.store.update(PREFIX + name, _encode(node), revision) is None:
            raise Conflict(_modified(name))
        return await self.get(name)

    async def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch; with ``metadata.resourceVersion`` in it, only against that version."""
        wanted = str((patch.get("metadata") or {}).get("resourceVersion", "") or "")
        for _attempt in range(10):
            current = await self.get(name)
            revision = int(current["metadata"]["resourceVersion"])
            if wanted and wanted != str(revision):
                raise Conflict(_modified(name))
            merged = merge_patch(current, patch)
            merged["metadata"]["name"] = name
            if await self.store.update(PREFIX + name, _encode(merged), revision) is not None:
                return await self.get(name)
            if wanted:
                raise Conflict(_modified(name))
        raise Conflict(_modified(name))

    async def report_status(self, name: str) -> None:
        """The kubelet's status update: ``nodeInfo`` with the versions of this binary (after
        an upgrade the Node object shows the new ``kubeletVersion``)."""
        await self.patch(name, {"status": {"nodeInfo": node_info()}})

    async def merge_labels(self, name: str, labels: dict[str, str]) -> bool:
        """Add or change labels (never remove): what k3s does to an existing node. True when
        the node exists (whether or not anything changed)."""
        try:
            node = await self.get(name)
        except NotFound:
            return False
        have = node["metadata"].get("labels") or {}
        if all(have.get(k) == v for k, v in labels.items()):
            return True
        await self.patch(name, {"metadata": {"labels": labels}})
        return True


def _modified(name: str) -> str:
    return (
        f'Operation cannot be fulfilled on nodes "{name}": the object has been modified;'
        " please apply your changes to the latest version and try again"
    )
