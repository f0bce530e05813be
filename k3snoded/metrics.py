"""Prometheus text exposition (format 0.0.4) rendered from the daemon's status.

Hand-written on purpose: a dozen gauges do not justify a dependency in the shipped venv; the
tests parse the output with prometheus_client's own parser.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from k3snoded.opsstate import DONE, HALTED, RUNNING


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_esc(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _family(
    name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float]]
) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(lbl)} {float(v)!r}" for lbl, v in samples]
    return lines


def render_metrics(status: dict[str, Any]) -> str:
    node = status.get("node", {})
    k3s = status.get("k3s", {})
    vip = status.get("vip", {}) or {}
    counters = status.get("counters", {}) or {}
    name = str(node.get("name", ""))
    role = str(node.get("role", "none"))
    out: list[str] = []
    out += _family(
        "k3snoded_info",
        "gauge",
        "Static information about this daemon.",
        [({"version": str(status.get("version", "")), "node": name}, 1)],
    )
    out += _family(
        "k3snoded_role",
        "gauge",
        "The role this node runs (1 for the current role).",
        [({"role": r}, 1 if r == role else 0) for r in ("none", "server", "agent")],
    )
    out += _family(
        "k3snoded_k3s_ready",
        "gauge",
        "1 when the local k3s is ready.",
        [({}, 1 if k3s.get("ready") else 0)],
    )
    out += _family(
        "k3snoded_k3s_restarts_total",
        "counter",
        "Times the supervisor restarted k3s.",
        [({}, int(k3s.get("restarts") or 0))],
    )
    out += _family(
        "k3snoded_k3s_crash_loop",
        "gauge",
        "1 while k3s is exiting repeatedly soon after start.",
        [({}, 1 if k3s.get("crash_loop") else 0)],
    )
    out += _family(
        "k3snoded_vip_held",
        "gauge",
        "1 while this node holds the virtual IP.",
        [({}, 1 if vip.get("held") else 0)],
    )
    out += _family(
        "k3snoded_vip_transitions_total",
        "counter",
        "VRRP state transitions of the local speaker.",
        [({}, int(vip.get("transitions") or 0))],
    )
    out += _family(
        "k3snoded_vrrp_adverts_refused_total",
        "counter",
        "VRRP adverts dropped because they failed authentication, by reason.",
        [({"reason": str(r)}, int(n)) for r, n in sorted((vip.get("refused") or {}).items())],
    )
    out += _family(
        "k3snoded_ca_pin_alarms",
        "gauge",
        "Sources of the cluster CA hash that disagree now (docs/security.md).",
        [({}, len((status.get("ca_pin") or {}).get("alarms") or []))],
    )
    out += _family(
        "k3snoded_peers",
        "gauge",
        "Machines this node knows of (discovery and datastore).",
        [({}, len(status.get("peers", []) or []))],
    )
    out += _family(
        "k3snoded_decisions_total",
        "counter",
        "Role decisions written by this node while coordinator.",
        [({}, int(counters.get("decisions", 0)))],
    )
    out += _family(
        "k3snoded_lease_renew_seconds",
        "gauge",
        "Duration of the last datastore heartbeat/lease round trip.",
        [({}, float(counters.get("renew_seconds", 0.0)))],
    )
    out += _family(
        "k3snoded_datastore_statements_total",
        "counter",
        "SQL statements this node sent to the datastore.",
        [({}, int(counters.get("statements", 0)))],
    )
    out += _fleet(status)
    return "\n".join(out) + "\n"


def _fleet(status: dict[str, Any]) -> list[str]:
    """What the alert rules (packaging/monitoring/) need beyond this machine: the configured
    limits, and the fleet as this machine last read it from the datastore (every member reads
    the same tables, so the rules take the max over machines)."""
    limits = status.get("limits", {}) or {}
    peers = status.get("peers", []) or []
    ops = status.get("operations") or {}
    rollout = ops.get("rollout") or {}
    paused = ops.get("paused") or {}
    spares = [
        p for p in peers if p.get("alive") and p.get("eligible") and p.get("role") != "server"
    ]
    out = _family(
        "k3snoded_servers_wanted",
        "gauge",
        "servers.count: how many k3s servers the fleet should run.",
        [({}, int(limits.get("servers_wanted", 0)))],
    )
    out += _family(
        "k3snoded_lease_ttl_seconds",
        "gauge",
        "coordination.lease_ttl: a lease not renewed within this is lost.",
        [({}, float(limits.get("lease_ttl", 0.0)))],
    )
    out += _family(
        "k3snoded_vip_enabled",
        "gauge",
        "1 when this machine takes part in holding the registration VIP (vip.enabled).",
        [({}, 1 if limits.get("vip") else 0)],
    )
    out += _family(
        "k3snoded_fleet_spares",
        "gauge",
        "Live machines that may be a server and are not one (could replace a failed server); "
        "absent without a shared datastore.",
        [({}, len(spares))] if "coordinator" in status else [],
    )
    out += _family(
        "k3snoded_fleet_maintenance",
        "gauge",
        "Machines in maintenance.",
        [({}, len(ops.get("maintenance") or []))],
    )
    out += _family(
        "k3snoded_fleet_paused",
        "gauge",
        "1 while the fleet is paused (k3snoded pause): no role changes.",
        [({}, 1 if paused else 0)],
    )
    out += _family(
        "k3snoded_fleet_paused_since_seconds",
        "gauge",
        "Unix time the fleet was paused (absent when it is not).",
        [({}, float(paused.get("since") or 0.0))] if paused else [],
    )
    out += _family(
        "k3snoded_rollout",
        "gauge",
        "The rolling k3s upgrade by state (1 for the current state; all 0 without one).",
        [({"state": s}, 1 if rollout.get("state") == s else 0) for s in (RUNNING, HALTED, DONE)],
    )
    return out
