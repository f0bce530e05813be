"""Operators' requests to a fleet member, and what ``k3snoded status`` shows of operations.

Every request is logged with who asked: the CLI sends ``by`` (the user and the machine it ran
on), and ``via`` says how it arrived (this machine's control socket, or a signed peer request
and its source address). A request another machine must carry out is passed on to it with a
signed peer request: maintenance to the node concerned (when it cannot be reached its flag is
written here and it acts when it reads it), a switchover to the VIP holder.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from k3snoded.opsstate import Switchover
from k3snoded.versions import newest, older

if TYPE_CHECKING:
    from k3snoded.operations import Operations

log = logging.getLogger("k3snoded.operations")


def _ok(**kw: Any) -> dict[str, Any]:
    return {"ok": True, **kw}


def _no(why: str) -> dict[str, Any]:
    return {"ok": False, "why": why}


async def handle(ops: Operations, req: dict[str, Any], via: str) -> dict[str, Any]:
    action = str(req.get("action"))
    who = f"{req.get('by') or 'someone'} ({via})"
    try:
        if action in ("pause", "resume"):
            await ops.set_pause(action == "pause", who)
            return _ok(result=f"fleet {'paused' if action == 'pause' else 'resumed'}")
        if action == "maintenance":
            return await _maintenance(ops, req, who)
        if action == "switchover":
            return await _switchover(ops, req, who)
        if action == "vip-boost":
            why = ops.roles.vip.boost(min(float(req.get("seconds", 5.0)), 30.0))
            return _no(why) if why else _ok()
        if action == "vip-unboost":
            ops.roles.vip.unboost()
            return _ok()
        if action == "kube":
            limit = min(float(req.get("timeout", 0.0)), 3600.0)
            op, node = str(req.get("op")), str(req.get("node"))
            return _ok(result=await ops.kube.run(op, node, limit, forward=False))
        if action == "refresh":
            ops.refresh()
            return _ok()
    except Exception as exc:  # DatastoreError, KubeError, OpsError: said to the caller
        log.warning("request %s from %s failed: %s", action, who, exc)
        return _no(str(exc))
    return _no(f"unknown action {action!r}")


async def _maintenance(ops: Operations, req: dict[str, Any], who: str) -> dict[str, Any]:
    node = str(req.get("node") or ops.me)
    on = bool(req.get("on"))
    known = {m.name for m in ops.roles.members}
    if node not in known:  # a member that is not the coordinator sees only a part of the fleet
        known = {r.member.name for r in await ops.roles.ds.members()}
    if node not in known:
        return _no(f"{node} is not a member of this fleet")
    if node != ops.me and ops.ask is not None and not req.get("forwarded"):
        try:
            answer = await ops.ask(node, {**req, "by": req.get("by") or who, "forwarded": True})
            if answer.get("ok"):
                return answer
        except Exception as exc:
            log.info("cannot reach %s (%s): recording its maintenance here", node, exc)
    await ops.set_maintenance(node, on, who)
    what = "in maintenance" if on else "out of maintenance"
    return _ok(result=f"{node} goes {what}")


async def _switchover(ops: Operations, req: dict[str, Any], who: str) -> dict[str, Any]:
    to = str(req.get("to") or "")
    roles = ops.roles
    if not roles.vip.holds:
        if req.get("forwarded"):
            return _no("not holding the VIP")
        return await _find_holder(ops, req, who)
    ready = ops.servers()
    if to and to not in ready:
        return _no(f"{to} is not a ready server that may take the VIP (ready: {ready})")
    if not ready:
        return _no("no other ready server to take the VIP")
    best = newest([roles.versions.get(n, "") for n in ready]) or ""
    prefer = best if any(older(roles.versions.get(n, ""), best) for n in ready) else ""
    outcome = await ops.switch_away(
        "switchover", f"switchover asked by {who}", to=to, prefer=prefer
    )
    # Outcome.to is the new master's address; the record names the machine.
    names = {m.address: m.name for m in roles.members}
    doc = Switchover(
        id=os.urandom(6).hex(),
        by=who,
        at=ops._clock(),
        from_node=ops.me,
        to_node=names.get(outcome.to, outcome.to),
        result=outcome.sentence,
    )
    await ops.write_switchover(doc)
    log.info("switchover asked by %s: %s", who, outcome.sentence)
    if not outcome.moved:
        return _no(outcome.sentence)
    return _ok(result=outcome.sentence, seconds=round(outcome.seconds, 4))


async def _find_holder(ops: Operations, req: dict[str, Any], who: str) -> dict[str, Any]:
    """Pass a switchover to every other live server; the one that holds the VIP does it."""
    if ops.ask is None:
        return _no("this machine does not hold the VIP and cannot ask the others")
    servers = ops.servers(ready=False)
    fwd = {**req, "by": req.get("by") or who, "forwarded": True}
    answers = await asyncio.gather(*(ops.ask(n, fwd) for n in servers), return_exceptions=True)
    for answer in answers:
        if isinstance(answer, dict) and (
            answer.get("ok") or answer.get("why") != "not holding the VIP"
        ):
            return answer
    return _no("no server holds the VIP")


def status(ops: Operations) -> dict[str, Any]:
    view, roles = ops.view, ops.roles
    out: dict[str, Any] = {
        "k3s_version": ops.version,
        "paused": None,
        "maintenance": sorted(view.under_maintenance),
        "maintenance_here": ops.maintenance.state or None,
        "rollout": None,
        "switchover": None,
    }
    if view.pause is not None and view.pause.paused:
        out["paused"] = {"by": view.pause.by, "since": view.pause.at}
    r = view.rollout
    if r is not None:
        machines = []
        for m in sorted(roles.members, key=lambda m: m.name):
            p = view.progress.get(m.name)
            mine = p if p is not None and p.target == r.target else None
            machines.append(
                {
                    "name": m.name,
                    "version": roles.versions.get(m.name, ""),
                    "step": mine.step if mine else "",
                    "since": mine.since if mine else None,
                    "error": mine.error if mine else "",
                }
            )
        out["rollout"] = {
            "target": r.target,
            "state": r.state,
            "grants": list(r.grants),
            "started_at": r.started_at,
            "halted_node": r.halted_node or None,
            "halted_error": r.halted_error or None,
            "note": r.note,
            "machines": machines,
        }
    if view.switchover is not None:
        s = view.switchover
        out["switchover"] = {"by": s.by, "at": s.at, "from": s.from_node, "to": s.to_node,
                             "result": s.result}  # fmt: skip
    return out
