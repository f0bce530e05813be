"""What a reload (SIGHUP) can apply, key by key. Private to ``k3snoded.config``.

Every configurable key is in exactly one of two tables: ``APPLIED`` keys take full effect on
a reload (k3s restarted with its new command line, the VIP moved, eligibility changed, the
coordinator's timings and counts used from the next cycle); ``RESTART`` keys cannot change in a
running daemon, and a reload that changes one is refused as a whole, naming them, and the
running configuration is kept. A dotted prefix ("datastore") covers every key under it.
``docs/configuration.md`` shows the same tables (a unit test keeps them equal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

RESTART: dict[str, str] = {
    "cluster.name": "the fleet's key, peer signatures and token verifier derive from it",
    "cluster.token_file": "the fleet's key derives from the token (and k3s's own token)",
    "cluster.agent_token_file": "whether the machine holds the cluster token decides what "
    "runs (discovery, the peer API's key); its content is read when k3s next starts",
    "node.name": "it is this machine's name in the fleet and in Kubernetes",
    "node.address": "discovery and the peer API are bound to it",
    "node.interface": "discovery is bound to it",
    "node.state_dir": "the token copy and the remembered role live there",
    "node.run_dir": "the control socket and the k3s pid file live there",
    "k3s.restart_backoff_max": "the supervisor reads it at start",
    "datastore": "coordination and k3s must move to another datastore together; restart "
    "every machine (each then follows the first-server rule on the new datastore)",
    "coordination.retry_timeout": "the datastore connection's driver timeouts",
    "discovery": "mDNS and the seeds are started once",
    "api": "the peer API listens on it",
}

APPLIED: dict[str, str] = {
    "node.role": "eligibility: the coordinator re-decides; a machine that may no longer "
    "coordinate gives up the coordinator lease",
    "node.labels": "k3s is restarted with the new flags",
    "node.taints": "k3s is restarted with the new flags",
    "k3s.binary": "k3s is restarted with it",
    "k3s.data_dir": "k3s is restarted with it",
    "k3s.server_args": "k3s is restarted with the new flags",
    "k3s.agent_args": "k3s is restarted with the new flags",
    "k3s.ready_timeout": "used from the next start of k3s",
    "k3s.stop_timeout": "used from the next stop of k3s",
    "k3s.node_password_file": "written, if missing, before k3s restarts",
    "coordination.renew_interval": "used from the next cycle",
    "coordination.lease_ttl": "used from the next lease statement",
    "coordination.dead_after": "used from the next decision",
    "servers.count": "the coordinator re-decides",
    "servers.dedicated": "servers are restarted with (or without) the taint",
    "registration.address": "servers restart with the new --tls-san, agents with the new "
    "--server, and the VIP moves to it",
    "registration.tls_san": "servers are restarted with the new flags",
    "registration.vip": "the VRRP speaker is restarted with the new settings",
    "k3s.install": "auto: used by the next rollout (a missing binary is installed at start)",
    "k3s.version": "install auto: the coordinator rolls the fleet to it, one machine at a "
    "time (docs/operations.md); install none: informational",
    "k3s.mirror": "used by the next download (a rollout, or a missing binary at start)",
    "k3s.airgap_file": "used by the next install (a rollout, or a missing binary at start)",
    "k3s.airgap_sha256_file": "used by the next install (a rollout, or a missing binary at start)",
    "upgrade": "used from the next step of a rollout",
}


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every configurable key of a config (dataclass tree) and its value, by dotted name."""
    for f in dataclasses.fields(value):
        if f.name == "source":
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        inner = getattr(value, f.name)
        if dataclasses.is_dataclass(inner):
            yield from leaves(inner, key)
        else:
            yield key, inner


def rule(key: str) -> tuple[str, str] | None:
    """("restart" | "applied", why) for a dotted key, by its longest listed prefix."""
    best: tuple[str, str] | None = None
    size = -1
    for table, kind in ((RESTART, "restart"), (APPLIED, "applied")):
        for name, why in table.items():
            if (key == name or key.startswith(name + ".")) and len(name) > size:
                best, size = (kind, why), len(name)
    return best


def changed_keys(old: Any, new: Any) -> list[str]:
    """The dotted keys whose values differ between two configs."""
    before = dict(leaves(old))
    return [key for key, value in leaves(new) if before.get(key) != value]


def needs_restart(old: Any, new: Any) -> list[str]:
    """The changed keys a reload cannot apply (unclassified keys count as such)."""
    out = []
    for key in changed_keys(old, new):
        found = rule(key)
        if found is None or found[0] == "restart":
            out.append(key)
    return out
