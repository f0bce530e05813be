"""Human-readable summaries for ``check-config`` and ``status``. No secrets are ever printed."""

from __future__ import annotations

import time
from typing import Any

from k3snoded._config_rules import hide_password
from k3snoded.config import Config
from k3snoded.roles import describe_role


def _redact_endpoint(endpoint: str) -> str:
    """``mysql://k3s:secret@tcp(db:3306)/k3s`` → ``mysql://k3s:***@tcp(db:3306)/k3s``."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or "@" not in rest:
        return endpoint
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else endpoint


def describe_config(cfg: Config) -> str:
    ds = hide_password(_redact_endpoint(cfg.datastore.endpoint))
    ds = ds or "k3s's embedded SQLite (single server)"
    reg = cfg.registration
    vip = (
        f"VIP {reg.address}/{reg.vip.prefix} on {reg.vip.interface or cfg.node.interface} "
        f"(VRID {reg.vip.vrid}, advert {reg.vip.advert_interval} s)"
        if reg.vip.enabled and reg.address
        else "no VIP"
    )
    lines = [
        f"{cfg.source}: configuration is valid",
        f"  cluster       {cfg.cluster.name}",
        "  token         "
        + (
            f"the agent token only ({cfg.cluster.agent_token_file})"
            if cfg.cluster.agent_token_file is not None
            else f"the cluster token ({cfg.cluster.token_file})"
        ),
        f"  node          {cfg.node.name} ({cfg.node.address or 'address not detected'}"
        f" on {cfg.node.interface or '?'}), role {cfg.node.role.value}",
        f"  this machine  {describe_role(cfg)}",
        f"  datastore     {ds}",
        f"  servers       {cfg.servers.count}{' dedicated' if cfg.servers.dedicated else ''}",
        f"  registration  {reg.address or '(learned from peers)'}; {vip}",
        f"  discovery     mDNS {'on' if cfg.discovery.mdns else 'off'}, "
        f"{len(cfg.discovery.seeds)} seed(s)",
    ]
    return "\n".join(lines)


def describe_status(s: dict[str, Any]) -> str:
    node = s.get("node", {})
    k3s = s.get("k3s", {})
    vip = s.get("vip") or {}
    ops = s.get("operations") or {}
    ready = "ready" if k3s.get("ready") else k3s.get("state", "?")
    if k3s.get("crash_loop"):
        ready += " (crash loop)"
    lines = [
        f"node      {node.get('name')}  role {node.get('role')}  (preference "
        f"{node.get('preference')})",
        f"k3s       {ready}  pid {k3s.get('pid') or '-'}  restarts {k3s.get('restarts', 0)}"
        + (f"  version {ops['k3s_version']}" if ops.get("k3s_version") else ""),
        f"register  {s.get('registration') or '-'}",
        f"vip       {vip.get('address') or '-'}  "
        f"{'held here' if vip.get('held') else 'not held here'}"
        + (f"  state {vip['state']}" if vip.get("state") else ""),
        f"decision  {s.get('decision', '')}",
    ]
    pin = s.get("ca_pin") or {}
    if pin:
        found = pin.get("ca_hash")
        where = f"{found[:16]}… from {pin.get('source')}" if found else "not known yet"
        token = "agent token" if pin.get("agent_token") else "cluster token's password"
        lines.append(f"ca pin    {where}; agents join with the {token}")
        lines += [f"ALARM     {alarm}" for alarm in pin.get("alarms") or []]
    if s.get("coordinator"):
        lines.append(f"coordinator {s['coordinator']}")
    lines += _operations(ops)
    peers = s.get("peers") or []
    if peers:
        lines.append("")
        lines.append(f"{'MACHINE':<20} {'ROLE':<8} {'READY':<6} {'HEARTBEAT':>9}  ADDRESS")
        for p in peers:
            age = p.get("heartbeat_age")
            age_s = f"{age:.1f}s" if isinstance(age, int | float) else "-"
            lines.append(
                f"{p.get('name', '?'):<20} {p.get('role', '?'):<8} "
                f"{'yes' if p.get('ready') else 'no':<6} {age_s:>9}  {p.get('address', '')}"
            )
    return "\n".join(lines)


def _ago(t: object) -> str:
    if not isinstance(t, int | float) or not t:
        return "-"
    return f"{max(0.0, time.time() - t):.0f}s ago"


def _operations(ops: dict[str, Any]) -> list[str]:
    """Planned operations: pause, maintenance, the last switchover, the rollout per machine."""
    lines: list[str] = []
    if ops.get("maintenance_here"):
        lines.append(f"maintenance here: {ops['maintenance_here']}")
    paused = ops.get("paused")
    if paused:
        lines.append(f"paused    since {_ago(paused.get('since'))} by {paused.get('by')} "
                     "(no role changes until k3snoded resume)")  # fmt: skip
    if ops.get("maintenance"):
        lines.append(f"maintenance {', '.join(ops['maintenance'])}")
    sw = ops.get("switchover")
    if sw:
        lines.append(f"switchover {sw.get('from')} -> {sw.get('to')} by {sw.get('by')}: "
                     f"{sw.get('result')} ({_ago(sw.get('at'))})")  # fmt: skip
    r = ops.get("rollout")
    if r:
        if r.get("state") == "halted":
            state = f"HALTED on {r.get('halted_node')}: {r.get('halted_error')}"
        else:
            state = f"{r.get('state')}: {r.get('note') or ''}".rstrip(": ")
        lines += ["", f"rollout   {r.get('target')}  {state}"]
        lines.append(f"{'MACHINE':<20} {'VERSION':<16} {'STEP':<14} SINCE")
        for m in r.get("machines") or []:
            since = _ago(m.get("since")).removesuffix(" ago")
            lines.append(f"{m.get('name', '?'):<20} {m.get('version') or '-':<16} "
                         f"{m.get('step') or '-':<14} {since}")  # fmt: skip
    return lines
