"""Planned operations on one fleet member: rolling k3s upgrades, maintenance, pause, switchover.

``Operations`` hangs off the fleet loop (``fleet.FleetRoles``) through a few hooks, one
decision each:

* ``after_cycle``: read the operations' flags (``opsstate.py``) when due, run the rollout plan
  while this machine coordinates (``rollout.py``), record that this machine took the VIP,
  start or resume this machine's upgrade (``upgrader.py``) and its maintenance
  (``maintenance.py``);
* ``ineligible``: a machine in maintenance says so in its heartbeat: the coordinator gives its
  server seat to another, and it keeps its own k3s server until that one is ready and it is
  drained (``override``, as ``k3snoded leave`` does); then its k3s stops: out of service;
* ``may_decide``: not while paused (the coordinator makes no role changes);
* ``decide``: the election under the version-skew rule, no demotion of a server being upgraded;
* ``override``: the role the loop applies while the upgrader has k3s stopped on purpose.

Flags are read at most once a cycle: every cycle while something is under way here (this
machine coordinates a rollout, is granted or upgrading, enters or leaves maintenance), every
``READ_EVERY`` cycles at rest, and at once after a signed ``refresh`` from the machine that
changed them. Requests (``handle``) come from the control socket and the signed peer API
(``ops_api.py``), and each is logged with who asked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from k3snoded.election import ElectionInput
from k3snoded.maintenance import MaintenanceRunner
from k3snoded.model import Decision, InstallMode, Role
from k3snoded.opsstate import (
    MAINT_PREFIX,
    PAUSE,
    ROLLOUT,
    RUNNING,
    SWITCHOVER,
    UPGRADE_PREFIX,
    VIP,
    Maintenance,
    OpsView,
    Pause,
    Progress,
    Switchover,
    VipHolder,
    dump,
    node_flag,
    parse,
)
from k3snoded.roles import Wanted
from k3snoded.rollout import RolloutInput, decide_with_skew, in_upgrade, plan, settled_version
from k3snoded.switchover import Ask, Outcome, Target, hand_over
from k3snoded.upgrader import Binary, Kube, Upgrader
from k3snoded.versions import older

if TYPE_CHECKING:
    from k3snoded.fleet import FleetRoles
    from k3snoded.process import ChildStatus

log = logging.getLogger("k3snoded.operations")

READ_EVERY = 5  # cycles between reads of the flags at rest (15 s with the defaults)
MAINTENANCE_REASON = "maintenance: out of service (k3snoded maintenance off to return)"


class Operations:
    def __init__(
        self,
        roles: FleetRoles,
        *,
        binary: Binary,
        kube: Kube,
        ask: Ask | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.roles = roles
        self.me = roles.me
        self.kube = kube
        self.ask = ask
        self._clock = clock
        self.view = OpsView()
        self._read_due = True
        self._read_once = False
        self._cycles = 0
        self._down_why = ""
        self._before: Wanted | None = None
        self._pending: dict[str, str] = {}  # flag writes the datastore has not taken yet
        self._tasks: set[asyncio.Task[Any]] = set()
        self._vip_recorded = False
        self.upgrader = Upgrader(
            self.me,
            cfg=lambda: roles.cfg,
            binary=binary,
            kube=kube,
            ctl=self,
            write=self._write_progress,
            clock=clock,
        )
        self.maintenance = MaintenanceRunner(self)

    # ---- what the fleet loop asks -----------------------------------------------------------
    async def start(self) -> None:
        self.upgrader.version = await self.upgrader.binary.version()
        if self.upgrader.version:
            log.info("k3s binary %s is %s", self.roles.cfg.k3s.binary, self.upgrader.version)

    @property
    def version(self) -> str:
        return self.upgrader.version

    @property
    def ineligible(self) -> bool:
        """In maintenance (once it began: not while k3s is down for an upgrade)."""
        return self.maintenance.on

    async def may_decide(self) -> bool:
        """Whether the coordinator may make role changes now: not while paused. A daemon that
        has not read the flags yet (it just started, or just became coordinator after an
        outage) reads them first, so a pause is never missed by a new coordinator."""
        if not self._read_once:
            await self._read()
        return not self.view.paused

    def decide(self, inp: ElectionInput) -> Decision:
        """``election.decide`` under the version-skew rule and the rollout (``rollout.py``)."""
        r = self.view.rollout
        if r is None or r.state != RUNNING:
            return decide_with_skew(inp, self.roles.versions, (), "")
        upgrading = in_upgrade(r, self.view.progress)
        return decide_with_skew(inp, self.roles.versions, upgrading, r.target)

    def override(self, mine: Role | None) -> Wanted | None:
        roles = self.roles
        if self._down_why:
            return Wanted(Role.NONE, "", self._down_why)
        if mine is Role.AGENT and not self.ineligible:
            return self._skew_wait()
        if not self.ineligible or mine is Role.SERVER:
            return None
        # In maintenance: keep what runs until drained, and a server until its replacement
        # is ready; then out of service (k3s stopped) until `k3snoded maintenance off`.
        if not self.maintenance.drained:
            return roles.wanted if roles.wanted.role is not Role.NONE else None
        if roles.wanted.role is Role.SERVER and not roles._handed_over():
            why = "maintenance: keeping the k3s server until a replacement is ready"
            return Wanted(Role.SERVER, roles.wanted.registration, why)
        return Wanted(Role.NONE, "", MAINTENANCE_REASON)

    def _skew_wait(self) -> Wanted | None:
        """No agent newer than a server (k3s's version-skew rule): a machine upgraded before it
        was cut off or frozen, and demoted meanwhile, waits for the servers to catch up (the
        rollout upgrades them) rather than run an agent newer than one of them."""
        why = self.skew_blocks(self.version)
        return Wanted(Role.NONE, "", f"agent waits: {why}") if why else None

    def skew_blocks(self, version: str) -> str:
        """Why this machine, an agent, may not run k3s ``version`` now: a live server runs an
        older release (k3s's version-skew rule), or, for a k3s not running yet, is being
        upgraded from one (it may yet be rolled back to it; a running agent is stopped only
        for what heartbeats say, never for a progress flag read a while ago); "" when it may
        (or it is a server)."""
        roles = self.roles
        if roles.assigned.get(self.me) is Role.SERVER:
            return ""
        dead_after = roles.cfg.coordination.dead_after
        progress = self.view.progress if self.child.pid is None else {}
        if self.child.pid is None and not self._read_once:
            return "the upgrade flags are not read yet (a server may be mid-upgrade)"
        for m in roles.members:
            v = settled_version(m.name, roles.versions, progress)
            if (
                m.name != self.me
                and roles.assigned.get(m.name) is Role.SERVER
                and m.heartbeat_age <= dead_after
                and older(v, version)
            ):
                runs = "runs" if v == roles.versions.get(m.name, "") else "is upgrading from"
                return f"server {m.name} {runs} k3s {v}, older than {version} (version-skew rule)"
        return ""

    def no_server_ready(self) -> bool:
        """This machine is an agent and no live server is ready: its k3s cannot be ready."""
        roles = self.roles
        if roles.assigned.get(self.me) is Role.SERVER:
            return False
        live = set(self.live())
        return not any(
            m.name in live
            and m.name != self.me
            and m.ready
            and roles.assigned.get(m.name) is Role.SERVER
            for m in roles.members
        )

    async def after_cycle(self) -> None:
        await self._flush()
        if self._read_needed():
            await self._read()
        else:
            self._cycles += 1
        if self.roles.is_coordinator:
            await self._coordinate_rollout()
        await self._record_vip()
        self.upgrader.tick(self.view)
        self.maintenance.tick()

    def tasks(self) -> list[asyncio.Task[Any]]:
        """Every task this component runs (the simulator ends them when a daemon dies)."""
        own = [self.upgrader.task, self.maintenance.task]
        return [t for t in (*own, *self._tasks) if t is not None and not t.done()]

    async def stop(self) -> None:
        await self.upgrader.stop()
        await self.maintenance.stop()
        for task in list(self._tasks):
            task.cancel()

    # ---- K3sControl, for the upgrader ---------------------------------------------------------
    @property
    def child(self) -> ChildStatus:
        return self.roles.supervisor.status

    async def hold_down(self, why: str) -> None:
        """Stop k3s now, whatever the loop is doing (it may be waiting out a datastore
        outage); the loop keeps it stopped until ``resume``."""
        if not self._down_why:
            self._before = self.roles.wanted
        self._down_why = why
        await self.roles.apply(Wanted(Role.NONE, "", why))
        self.roles.wake()

    async def resume(self) -> None:
        """Start k3s again in the role it had (the loop corrects it if that changed)."""
        if not self._down_why:
            return
        self._down_why = ""
        before = self._before
        if before is not None and before.role is not Role.NONE:
            await self.roles.apply(before, force=True)
        self.roles.wake()

    async def vip_away(self) -> str:
        r = self.view.rollout
        target = r.target if r is not None else ""
        outcome = await self.switch_away("upgrade", "upgrading k3s", prefer=target)
        return outcome.sentence

    def vip_back(self) -> None:
        self.roles.vip.release("upgrade")

    # ---- reading and writing the flags --------------------------------------------------------
    async def _read(self) -> None:
        self.view = parse(await self.roles.ds.flags())
        if not self._read_once:
            self.roles.wake()  # an agent may wait for this first read (skew_blocks)
        self._read_due, self._read_once, self._cycles = False, True, 0

    def _read_needed(self) -> bool:
        if self._read_due or self._cycles + 1 >= READ_EVERY:
            return True
        r = self.view.rollout
        running = r is not None and r.state == RUNNING
        if self.roles.is_coordinator and (running or self._rollout_wanted()):
            return True
        if running and r is not None and self.me in r.grants:
            return True
        return self.upgrader.busy or self.maintenance.busy

    def _rollout_wanted(self) -> bool:
        target = self.target
        return bool(target) and any(older(v, target) for v in self.roles.versions.values())

    @property
    def target(self) -> str:
        k3s = self.roles.cfg.k3s
        return k3s.version if k3s.install is InstallMode.AUTO else ""

    async def write(self, name: str, text: str, *, retry: bool = True) -> None:
        """Write a flag now; if the datastore does not take it, at the next cycle. An
        operator's request is not retried (``retry=False``): the operator is told it failed,
        may ask again through another machine and then change their mind; a write of this
        machine's retried later would undo that newer request."""
        self._pending.pop(name, None)
        try:
            await self.roles.ds.set_flag(name, text)
        except Exception:
            if retry:
                self._pending[name] = text
            raise

    async def _flush(self) -> None:
        for name, text in list(self._pending.items()):
            await self.roles.ds.set_flag(name, text)
            self._pending.pop(name, None)

    async def _write_progress(self, p: Progress) -> bool:
        """Record an upgrade step; False (kept in _pending for the next cycle) when the
        datastore does not take it now."""
        self.view = dataclasses.replace(self.view, progress={**self.view.progress, p.node: p})
        name = node_flag(UPGRADE_PREFIX, p.node)
        try:
            await self.write(name, dump(p))
        except Exception as exc:
            log.warning("cannot record the upgrade step %s yet: %s", p.step, exc)
            return False
        return True

    def _lease_fresh(self) -> bool:
        """The coordinator lease was renewed recently enough that a write started now lands
        before anyone else could hold it (the fence of the coordinator's own documents)."""
        c = self.roles.cfg.coordination
        return self.roles.lease_age() < c.lease_ttl - (2 * c.retry_timeout + 0.5)

    # ---- the coordinator's part ------------------------------------------------------------
    async def _coordinate_rollout(self) -> None:
        roles, cfg = self.roles, self.roles.cfg
        d = plan(
            RolloutInput(
                target=self.target,
                current=self.view.rollout,
                progress=self.view.progress,
                members=roles.members,
                versions=roles.versions,
                assigned=roles.assigned,
                dead_after=cfg.coordination.dead_after,
                coordinator=self.me,
                now=self._clock(),
                maintenance=self.view.under_maintenance,
                paused=self.view.paused,
                agent_batch=cfg.upgrade.agent_batch,
                vip_holder=self.view.vip.node if self.view.vip is not None else None,
            )
        )
        if d.rollout is None or not self._lease_fresh():
            return
        before = self.view.rollout.grants if self.view.rollout is not None else ()
        await self.write(ROLLOUT, dump(d.rollout))
        self.view = dataclasses.replace(self.view, rollout=d.rollout)
        if d.sentence:
            log.info("rollout: %s", d.sentence)
        self.poke(n for n in d.rollout.grants if n not in before and n != self.me)

    async def _record_vip(self) -> None:
        holds = self.roles.vip.holds
        if holds and not self._vip_recorded:
            record = VipHolder(self.me, self._clock())
            await self.write(VIP, dump(record))
            self.view = dataclasses.replace(self.view, vip=record)
        self._vip_recorded = holds

    # ---- peers ----------------------------------------------------------------------------
    def live(self) -> list[str]:
        dead_after = self.roles.cfg.coordination.dead_after
        return [m.name for m in self.roles.members if m.heartbeat_age <= dead_after]

    def poke(self, names: Iterable[str]) -> None:
        """Tell ``names`` to read the flags now (best effort, in the background)."""
        if self.ask is None:
            return
        for name in names:
            task = asyncio.create_task(self._ask_quietly(name, {"action": "refresh"}))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _ask_quietly(self, name: str, req: dict[str, Any]) -> None:
        assert self.ask is not None
        try:
            await self.ask(name, req)
        except Exception as exc:
            log.debug("could not tell %s to %s: %s", name, req.get("action"), exc)

    def servers(self, *, ready: bool = True) -> list[str]:
        live = set(self.live())
        return sorted(
            m.name
            for m in self.roles.members
            if m.name in live
            and m.name != self.me
            and self.roles.assigned.get(m.name) is Role.SERVER
            and (m.ready or not ready)
            and not self.view.in_maintenance(m.name)
        )

    async def switch_away(self, key: str, why: str, *, prefer: str = "", to: str = "") -> Outcome:
        """Hand the VIP (if held here) to another ready server and keep it away (``key``)."""
        names = [to] if to else self.servers()
        versions = self.roles.versions
        if prefer:  # servers already on the release being rolled out first: one move only
            names.sort(key=lambda n: (older(versions.get(n, ""), prefer), n))
        addresses = {m.name: m.address for m in self.roles.members}
        targets = [Target(n, addresses.get(n, "")) for n in names]
        return await hand_over(
            self.roles.vip, targets, self.ask, key=key, why=why, keep_away=key != "switchover"
        )

    # ---- requests (control socket, signed peer API) -------------------------------------------
    async def handle(self, req: dict[str, Any], via: str) -> dict[str, Any]:
        from k3snoded.ops_requests import handle

        return await handle(self, req, via)

    def record_switchover(self, doc: Switchover) -> None:
        self.view = dataclasses.replace(self.view, switchover=doc)

    async def set_pause(self, paused: bool, who: str) -> None:
        doc = Pause(paused, who, self._clock())
        await self.write(PAUSE, dump(doc), retry=False)
        self.view = dataclasses.replace(self.view, pause=doc)
        if paused:
            log.warning("fleet paused, asked by %s: the coordinator makes no role changes", who)
        else:
            log.info("fleet resumed, asked by %s", who)
        self.poke(n for n in self.live() if n != self.me)

    async def set_maintenance(self, node: str, on: bool, who: str) -> None:
        doc = Maintenance(node, on, who, self._clock())
        await self.write(node_flag(MAINT_PREFIX, node), dump(doc), retry=False)
        self.view = dataclasses.replace(self.view, maintenance={**self.view.maintenance, node: doc})
        log.info("maintenance %s for %s, asked by %s", "on" if on else "off", node, who)
        self.roles.wake()
        self.poke(n for n in self.live() if n != self.me)

    async def write_switchover(self, doc: Switchover) -> None:
        self.record_switchover(doc)
        try:
            await self.write(SWITCHOVER, dump(doc))
        except Exception as exc:
            log.warning("cannot record the switchover: %s", exc)
            return
        self.poke(n for n in self.live() if n != self.me)  # the coordinator shows it at once

    def refresh(self) -> None:
        self._read_due = True
        self.roles.wake()

    # ---- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        from k3snoded.ops_requests import status

        return status(self)
