"""Human-readable summaries for ``check-config`` and ``status``. No secrets are ever printed."""

from __future__ import annotations

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
    ready = "ready" if k3s.get("ready") else k3s.get("state", "?")
    if k3s.get("crash_loop"):
        ready += " (crash loop)"
    lines = [
        f"node      {node.get('name')}  role {node.get('role')}  (preference "
        f"{node.get('preference')})",
        f"k3s       {ready}  pid {k3s.get('pid') or '-'}  restarts {k3s.get('restarts', 0)}",
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
