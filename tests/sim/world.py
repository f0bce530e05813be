"""One simulated fleet: machines running the real ``FleetRoles`` on a virtual clock, the
datastore model, the k3s model, the faults of a plan, and the invariants checked at every step.

Every machine's daemon is ``k3snoded.fleet.FleetRoles`` itself (so ``election.decide`` and
``roles.RoleSource.apply`` too), given a ``MemoryDatastore`` connection, a ``SupervisorModel``
and stand-ins for the VIP and discovery. What a fault does to a machine:

* crash: the daemon and k3s vanish, the server is not told (open transactions are abandoned);
  the machine boots again later with its state directory;
* freeze (SIGSTOP of everything): the machine sends, reads and starts nothing until thawed,
  and its daemon's tasks take no step (its clock runs on, as CLOCK_MONOTONIC does);
* daemon kill (SIGKILL of k3snoded only, restarted 5 s later, as systemd does): k3s keeps
  running and is adopted; the kernel closes the connection, so the server rolls back at once;
* daemon stop and start: ``FleetRoles.stop`` in the daemon's order, then k3s stopped;
* daemon restarted by systemd (``systemctl restart``, decision 0005): the role loop ends
  releasing nothing, k3s keeps running, and the next daemon adopts it;
* datastore down (for all, or one machine: refused or blackholed), slow (statements delayed
  past the lease TTL, answers lost, statements that never return), clock steps, partitions;
* a machine's k3s that never becomes ready or crash-loops; SIGHUP with a changed config;
* planned operations: a rolling k3s upgrade (a new ``k3s.version`` everywhere; sometimes a
  release that panics at start), a machine in maintenance for a while, the fleet paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from k3snoded.config import (
    Config,
    CoordinationConfig,
    DatastoreConfig,
    K3sConfig,
    NodeConfig,
    RegistrationConfig,
    ServersConfig,
    UpgradeConfig,
    VipConfig,
)
from k3snoded.datastore import COORDINATOR_LEASE
from k3snoded.fleet import FleetRoles
from k3snoded.model import InstallMode, Role, RolePreference
from k3snoded.operations import READ_EVERY, Operations
from k3snoded.process import ChildSpec
from k3snoded.versions import older
from k3snoded.vip import VipKeeper
from tests.sim.k3smodel import BAD, NEW, K3sCluster, K3sHost, Proc, SimBinary, SimKube, role_of
from tests.sim.memstore import MemoryDatastore, Server
from tests.sim.plan import Fault, Plan
from tests.sim.supmodel import SupervisorModel
from tests.sim.vloop import VirtualLoop

MACHINE: contextvars.ContextVar[str] = contextvars.ContextVar("machine", default="sim")


class SimVip(VipKeeper):
    """The VIP keeper without VRRP: records whether the speaker would run."""

    def __init__(self, cfg: Config, machine: SimMachine) -> None:
        super().__init__(replace(cfg, registration=replace(cfg.registration, address="")))
        self.machine = machine
        self.running = False
        self.healthy = False

    async def remove_stale(self) -> None:
        return None

    def health(self, healthy: bool) -> None:
        self.healthy = healthy

    async def ensure(self, *, run: bool, healthy: bool) -> None:
        if run and not self.running:
            self.machine.world.trace(self.machine.name, "VRRP speaker started")
        self.running = run
        self.healthy = healthy

    async def stop(self) -> None:
        self.running = False

    def status(self) -> dict[str, Any]:
        return {"address": None, "held": False}


class SimPeers:
    """Discovery: the key of the cluster token, and a registration address heard from peers."""

    def __init__(self, machine: SimMachine, key: bytes) -> None:
        self.machine = machine
        self._key = key

    @property
    def key(self) -> bytes:
        return self._key

    def announced_pins(self) -> list[tuple[str, bool, bool]]:
        """What the reachable machines announce of the cluster CA (capin.py)."""
        if self.machine.partitioned:
            return []
        out = []
        for m in self.machine.world.machines:
            roles = m.roles
            if m is self.machine or roles is None or not m.up or m.partitioned:
                continue
            server = roles.wanted.role is Role.SERVER
            out.append((roles.pins.announced_hash, roles.pin.agent_token, server))
        return out

    def registration(self) -> str | None:
        world = self.machine.world
        if self.machine.partitioned:
            return None
        for m in world.machines:
            roles = m.roles
            if m is self.machine or roles is None or not m.up or m.partitioned:
                continue
            if roles.wanted.role is Role.SERVER and roles.wanted.registration:
                return roles.wanted.registration
        return None


class Link:
    """The path from one machine to the database (implements ``memstore.Link``)."""

    def __init__(self, machine: SimMachine) -> None:
        self.machine = machine
        self.down = ""  # "" (up), refuse, blackhole: this machine's own outage or partition
        self.slow: tuple[float, float, float] | None = None  # (max delay, p lost, p hang)

    @property
    def state(self) -> str:
        world = self.machine.world
        if world.db_down:
            return world.db_down
        return self.down or "up"

    @property
    def frozen(self) -> bool:
        return self.machine.frozen

    @property
    def kernel_alive(self) -> bool:
        return self.machine.alive

    async def thawed(self) -> None:
        await self.machine.thaw_event.wait()

    def delay(self) -> float:
        world = self.machine.world
        slow = self.slow or world.db_slow
        base = world.rng.uniform(0.001, 0.02)
        if slow is None:
            return base
        longest, _lost, hang = slow
        if world.rng.random() < hang:
            return math.inf
        return base + world.rng.uniform(0.0, longest)

    def answer_lost(self) -> bool:
        slow = self.slow or self.machine.world.db_slow
        return slow is not None and self.machine.world.rng.random() < slow[1]


class SimMachine:
    def __init__(self, world: World, index: int, cfg: Config) -> None:
        self.world = world
        self.index = index
        self.name = cfg.node.name
        self.cfg = cfg
        self.config_version = 0
        self.link = Link(self)
        self.host = K3sHost(self)
        self.alive = False  # off until its first boot
        self.frozen = False
        self.partitioned = False
        self.thaw_event = asyncio.Event()
        self.thaw_event.set()
        for d in (cfg.node.state_dir, cfg.k3s.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.roles: FleetRoles | None = None
        self.vip: SimVip | None = None
        self.supervisor: SupervisorModel | None = None
        self.task: asyncio.Task[None] | None = None
        self.daemon_gen = 0
        self.boot_gen = 0
        self._deferred: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._held: list[Callable[[], None]] = []  # the daemon's task steps while frozen

    @property
    def up(self) -> bool:
        """Running: alive, not frozen, daemon running."""
        return self.alive and not self.frozen and self.task is not None and not self.task.done()

    # ---- timers that respect freezes and deaths ----------------------------------------------
    def later_daemon(self, delay: float, fn: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        return self.world.loop.call_later(delay, self._fire, "d", self.daemon_gen, fn, args)

    def later_k3s(self, delay: float, fn: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        return self.world.loop.call_later(delay, self._fire, "k", self.boot_gen, fn, args)

    def _fire(self, kind: str, gen: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if gen != (self.daemon_gen if kind == "d" else self.boot_gen):
            return
        if self.frozen:
            self._deferred.append((fn, args))
            return
        fn(*args)

    # ---- life ----------------------------------------------------------------------------------
    def boot_daemon(self) -> None:
        world = self.world
        self.daemon_gen += 1
        self.supervisor = SupervisorModel(self, self.cfg.k3s.restart_backoff_max)
        self.vip = SimVip(self.cfg, self)
        timeout = self.cfg.coordination.retry_timeout
        ds = MemoryDatastore(world.server, self.link, self.name, timeout)
        self.roles = FleetRoles(
            self.cfg,
            self.supervisor,
            vip=self.vip,
            peers=SimPeers(self, world.keys.get(self.name, world.key)),
            datastore=ds,
        )
        self.roles.ops = Operations(
            self.roles,
            binary=SimBinary(self.host),
            kube=SimKube(self),
            clock=lambda: world.now,
        )
        ctx = contextvars.copy_context()
        ctx.run(MACHINE.set, self.name)
        self.task = world.loop.create_task(self.roles.run(), name=self.name, context=ctx)
        self.task.add_done_callback(self._daemon_ended)

    def _daemon_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.world.fail(self.name, f"the daemon ended with {type(exc).__name__}: {exc}")

    def _end_daemon(self) -> None:
        self.daemon_gen += 1
        if self.supervisor is not None:
            self.supervisor.close()
        if self.task is not None:
            self.task.cancel()
        if self.roles is not None and self.roles.ops is not None:
            for task in self.roles.ops.tasks():  # the daemon's other tasks die with it
                task.cancel()
        self.roles = None
        self.vip = None

    def crash(self) -> None:
        self.alive = False
        self.thaw()
        self._end_daemon()
        self.boot_gen += 1
        self.host.kill()

    def boot(self) -> None:
        if self.alive:
            return
        self.alive = True
        self.boot_daemon()

    def kill_daemon(self) -> None:
        self._end_daemon()

    async def stop_daemon(self) -> None:
        """systemctl stop: the daemon's shutdown order (``daemon.Daemon.run``)."""
        roles, task = self.roles, self.task
        if roles is None or task is None or task.done():
            return
        seen = len(self.world.lines)
        await roles.stop()
        failed = any("could not release" in text for _, _, text in self.world.lines[seen:])
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        vip = self.vip
        if vip is not None and vip.running:
            self.world.fail(self.name, "the VRRP speaker runs after the daemon stopped")
        lease = self.world.server.leases.get(COORDINATOR_LEASE)
        healthy = self.link.state == "up" and not (self.link.slow or self.world.db_slow)
        if lease is not None and lease[0] == self.name and healthy and not failed:
            self.world.fail(self.name, "holds the coordinator lease after the daemon stopped")
        self._end_daemon()
        proc = self.host.proc
        if proc is not None and proc.alive:  # the daemon exits once its k3s has stopped
            stopped: asyncio.Future[None] = self.world.loop.create_future()

            def done() -> None:
                if not stopped.done():
                    stopped.set_result(None)

            self.host.stop(proc, done)
            await stopped

    def freeze(self) -> None:
        self.frozen = True
        self.thaw_event.clear()

    def thaw(self) -> None:
        if not self.frozen:
            return
        self.frozen = False
        self.thaw_event.set()
        # The daemon looks first, then what k3s did meanwhile arrives (the harder order for
        # the daemon: it finds its waits' time gone and k3s not yet reaped).
        held, self._held = self._held, []
        for again in held:
            again()
        deferred, self._deferred = self._deferred, []
        for fn, args in deferred:
            self.world.loop.call_soon(fn, *args)

    def hold(self, again: Callable[[], None]) -> bool:
        """A step of one of this machine's tasks: held while the machine is frozen."""
        if not self.frozen:
            return False
        self._held.append(again)
        return True

    def reload(self, cfg: Config, *, k3s_args: bool = True) -> None:
        """SIGHUP with a new config file: a frozen daemon handles it once thawed; a machine
        that is down reads the file when it boots. ``k3s_args``: the change reaches k3s's
        command line (k3s.version does not: the binary does, when it is swapped)."""
        self.cfg = cfg
        self.config_version += 1 if k3s_args else 0
        if self.roles is not None:
            self.later_daemon(0.0, self._reconfigure, cfg)

    def _reconfigure(self, cfg: Config) -> None:
        roles = self.roles
        if roles is not None and self.task is not None and not self.task.done():
            task = self.world.loop.create_task(roles.reconfigure(cfg))
            self.world._faults.add(task)
            task.add_done_callback(self.world._faults.discard)


class _TraceHandler(logging.Handler):
    def __init__(self, world: World) -> None:
        super().__init__(logging.INFO)
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        self.world.trace(MACHINE.get(), record.getMessage(), daemon=True)


class World:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.loop = VirtualLoop()
        self.start = self.loop.now
        self.server = Server(self.loop.time, dialect=plan.dialect)
        self.k3s = K3sCluster(self)
        self.key = b"sim-cluster-key"
        self.keys: dict[str, bytes] = {}  # machines whose cluster token differs
        self.db_down = ""
        self.db_slow: tuple[float, float, float] | None = None
        self.lines: list[tuple[float, str, str]] = []
        self.violation: str | None = None
        self.machines = [
            SimMachine(self, i, machine_config(plan, i, workdir)) for i in range(plan.machines)
        ]
        for m, fault in zip(self.machines, plan.k3s_faults, strict=True):
            m.host.fault = fault
        for m, slow in zip(self.machines, plan.slow_stops, strict=True):
            m.host.slow_stop = slow
        self._writes_seen = 0
        self._pids = itertools.count(1000)
        self._faults: set[asyncio.Task[None]] = set()
        self._settle_logged = False
        self.paused_since: float | None = None  # loop time the pause flag was written

    @property
    def now(self) -> float:
        return self.loop.now - self.start

    def _hold(self, ctx: contextvars.Context, again: Callable[[], None]) -> bool:
        name = ctx.get(MACHINE, "sim")
        return any(m.name == name and m.hold(again) for m in self.machines)

    def next_pid(self) -> int:
        return next(self._pids)

    # ---- trace ---------------------------------------------------------------------------------
    def trace(self, who: str, text: str, *, daemon: bool = False) -> None:
        self.lines.append((self.now, who, text if daemon else f"[sim] {text}"))

    def fail(self, who: str, text: str) -> None:
        """Record the first violation and stop the run at the end of this step."""
        if self.violation is None:
            self.violation = f"t={self.now:.2f} {who}: {text}"
            self.trace(who, f"INVARIANT VIOLATED: {text}")
            self.loop.stop()

    def _on_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.fail("sim", f"unexpected error in a callback: {context.get('message')} {exc!r}")

    def render(self) -> str:
        return "\n".join(f"{t:9.3f} {who:<4} {text}" for t, who, text in self.lines)

    # ---- facts the models ask for --------------------------------------------------------------
    def apiserver_for(self, agent: SimMachine) -> bool:
        """Whether an agent's load balancer reaches a server whose /readyz answers."""
        if agent.partitioned:
            return False
        return any(
            m.alive
            and not m.frozen
            and not m.partitioned
            and m.host.proc is not None
            and m.host.proc.serving
            for m in self.machines
        )

    def k3s_stopped_by_daemon(self, m: SimMachine, proc: Proc, wanted: ChildSpec | None) -> None:
        """The supervisor is about to stop a running k3s because the daemon wants otherwise."""
        new = role_of(wanted) if wanted is not None else Role.NONE
        roles = m.roles
        why = roles.wanted.reason if roles is not None else "?"
        self.trace(m.name, f"supervisor stops k3s {proc.role.value} (pid {proc.pid}): {why}")
        if proc.config_version != m.config_version or proc.first_start or proc.state != "ready":
            return
        if proc.version != m.host.installed:
            return  # the binary changed under it (an upgrade or a rollback): a config change
        if roles is not None and (roles.leaving or roles.wanted.reason.startswith("lost the boot")):
            return  # leaving, or the bootstrap fence (it cannot know the k3s just came up)
        if roles is not None and roles.ops is not None and roles.ops.ineligible:
            return  # in maintenance: out of service once handed over (a stated reason)
        if new is proc.role:
            self.fail(m.name, f"k3s {new.value} restarted without a change of role or config")
        # (judged by the assignment the daemon last read, not a newer one it cannot know)
        seen = roles.assigned.get(m.name) if roles is not None else None
        if new is Role.NONE and seen is proc.role:
            self.fail(m.name, f"k3s {proc.role.value} stopped while still assigned that role")

    # ---- invariants ----------------------------------------------------------------------------
    def on_step(self, _now: float) -> None:
        if self.violation is not None:
            return
        starting = [
            m.name
            for m in self.machines
            if m.alive
            and not m.frozen
            and m.host.proc is not None
            and m.host.proc.state == "starting"  # (SIGTERMed: shutting down, not bootstrapping)
            and m.host.proc.first_start
        ]
        if len(starting) > 1:
            self.fail(",".join(starting), "two k3s servers inside the cluster's first start")
        self._check_skew()
        writes = self.server.role_writes
        while self._writes_seen < len(writes):
            self._check_write(self._writes_seen)
            self._writes_seen += 1
        if self.now >= self.plan.settle_at:
            self._check_settled()

    def _check_skew(self) -> None:
        """k3s's version-skew rule: no ready agent runs a newer k3s than a ready server that
        the datastore says is a server."""
        servers, agents = [], []
        for m in self.machines:
            proc = m.host.proc
            if not m.alive or m.frozen or proc is None or proc.state != "ready":
                continue
            row = self.server.members.get(m.name)
            if proc.role is Role.SERVER and row is not None and row.assigned is Role.SERVER:
                servers.append((m.name, proc.version))
            elif proc.role is Role.AGENT:
                agents.append((m.name, proc.version))
        for s_name, s_version in servers:
            for a_name, a_version in agents:
                if older(s_version, a_version):
                    self.fail(a_name, f"agent on {a_version} newer than server {s_name} on "
                              f"{s_version} (version skew)")  # fmt: skip
                    return

    def _check_write(self, i: int) -> None:
        w = self.server.role_writes[i]
        lag = (READ_EVERY + 2) * 3.0 + 2 * self.plan.lease_ttl  # reading the flag, a cycle
        if self.paused_since is not None and w.at - self.paused_since > lag:
            self.fail(w.writer, "wrote roles while the fleet was paused")
        holder = self.server.lease_history[w.epoch - 1][1] if w.epoch else None
        if holder != w.writer or (i and w.epoch < self.server.role_writes[i - 1].epoch):
            self.fail(w.writer, f"wrote roles without holding the coordinator lease ({holder})")
        before = self.server.role_writes[i - 1].roles if i else {}
        writer = next(m for m in self.machines if m.name == w.writer)
        read_at = self.server.last_read.get(w.writer, w.at)
        seats = [n for n, r in before.items() if r is Role.SERVER]
        if writer.cfg.servers.count < len(seats):
            return  # servers.count was lowered: someone has to go, by the election's order
        for name in seats:
            if w.roles.get(name) is not Role.SERVER and self._healthy(name, read_at):
                self.fail(w.writer, f"demoted {name}, a ready live server (seat flap)")

    def _healthy(self, name: str, read_at: float) -> bool:
        """Alive, running, a ready k3s server, eligible, and its heartbeat reaching the db
        when the coordinator last read the member table."""
        m = next(m for m in self.machines if m.name == name)
        proc = m.host.proc
        if not m.up or proc is None or not proc.serving:
            return False
        if m.cfg.node.role is RolePreference.AGENT or (m.roles is not None and m.roles.leaving):
            return False
        if m.roles is not None and m.roles.ops is not None and m.roles.ops.ineligible:
            return False  # in maintenance: its seat is handed over (a stated reason)
        beats = [t for t in self.server.heartbeats.get(name, []) if t <= read_at]
        slack = 2 * m.cfg.coordination.retry_timeout + 0.5
        return bool(beats) and read_at - beats[-1] < m.cfg.coordination.dead_after - slack

    def _check_settled(self) -> None:
        count = self.machines[0].cfg.servers.count
        able = [
            m
            for m in self.machines
            if m.up and m.host.fault == "none" and m.cfg.node.role is not RolePreference.AGENT
        ]
        want = min(count, len(able))
        ready = [
            m.name
            for m in self.machines
            if m.up
            and m.host.proc is not None
            and m.host.proc.serving
            and (row := self.server.members.get(m.name)) is not None
            and row.assigned is Role.SERVER
        ]
        assigned = [n for n, row in self.server.members.items() if row.assigned is Role.SERVER]
        if len(ready) < want or len(assigned) > count:
            self.fail(
                "sim",
                f"{len(ready)} ready servers ({', '.join(ready) or 'none'}), want {want}, "
                f"{self.plan.settle_bound:.0f} s after the last fault",
            )
        self._check_rolled_out()
        if not self._settle_logged:
            self._settle_logged = True
            self.trace("sim", f"settled: ready servers {', '.join(ready)}")

    def _check_rolled_out(self) -> None:
        """After a rollout: no k3s on the bad release (rolled back); with a good release and no
        broken k3s, every machine up runs it."""
        rollouts = [f for f in self.plan.faults if f.kind == "rollout"]
        if not rollouts:
            return
        for m in self.machines:
            proc = m.host.proc
            if m.up and proc is not None and proc.version == BAD:
                self.fail(m.name, f"still runs {BAD} (a release that panics) after the rollout")
        broken = any(f.kind == "k3s_broken" for f in self.plan.faults) or any(
            k != "none" for k in self.plan.k3s_faults
        )
        if rollouts[-1].how != "good" or broken:
            return
        behind = [
            m.name
            for m in self.machines
            if m.up and (m.host.proc is None or m.host.proc.version != NEW)
        ]
        if behind:
            self.fail(",".join(behind), f"not on {NEW} {self.plan.settle_bound:.0f} s after")

    # ---- running -------------------------------------------------------------------------------
    async def _main(self) -> None:
        for m, at in zip(self.machines, self.plan.boot_at, strict=True):
            self.loop.call_later(at, m.boot)
        for fault in self.plan.faults:
            self.loop.call_later(fault.at, self._inject, fault)
        self.k3s.start()
        await asyncio.sleep(self.plan.duration)

    def _inject(self, fault: Fault) -> None:
        if self.violation is None:
            task = self.loop.create_task(self._run_fault(fault))
            self._faults.add(task)  # a fault may wait on a machine that crashes: keep it
            task.add_done_callback(self._faults.discard)

    async def _run_fault(self, f: Fault) -> None:
        m = self.machines[f.machine] if f.machine is not None else None
        self.trace(m.name if m else "sim", f"fault: {f.describe()}")
        if f.kind == "crash" and m and m.alive:
            m.crash()
            if math.isinf(f.duration):
                self.trace(m.name, "fault over: the machine stays dead")
                return
            await asyncio.sleep(f.duration)
            m.boot()
        elif f.kind == "freeze" and m and m.alive:
            m.freeze()
            await asyncio.sleep(f.duration)
            m.thaw()
            self.trace(m.name, "thawed")
        elif f.kind == "daemon_kill" and m and m.up:
            m.kill_daemon()
            await asyncio.sleep(5.0)
            if m.alive and m.roles is None:
                m.boot_daemon()
        elif f.kind == "systemd_restart" and m and m.up:
            m.kill_daemon()  # the role loop ends releasing nothing; k3s is left running
            await asyncio.sleep(f.arg)
            if m.alive and m.roles is None:
                m.boot_daemon()
        elif f.kind == "daemon_restart" and m and m.up:
            await m.stop_daemon()
            await asyncio.sleep(2.0)
            if m.alive and m.roles is None:
                m.boot_daemon()
        elif f.kind in ("db_down", "partition"):
            await self._outage(f, m)
        elif f.kind == "db_slow":
            slow = (f.arg, 0.1, 0.05)
            if m:
                m.link.slow = slow
            else:
                self.db_slow = slow
            self._links_changed()
            await asyncio.sleep(f.duration)
            if m:
                m.link.slow = None
            else:
                self.db_slow = None
            self._links_changed()
        elif f.kind == "clock_step":
            self.server.step += f.arg
        elif f.kind == "k3s_broken" and m:
            m.host.fault = str(f.how)
        elif f.kind == "die_mid_write" and m:
            await self._die_mid_write(f, m)
        elif f.kind == "sighup":
            for x in self.machines:
                x.reload(reload_config(x.cfg, f))
        elif f.kind == "rollout":
            version = NEW if f.how == "good" else BAD
            for x in self.machines:
                k3s = replace(x.cfg.k3s, install=InstallMode.AUTO, version=version)
                x.reload(replace(x.cfg, k3s=k3s), k3s_args=False)
        elif f.kind in ("maintenance", "pause"):
            await self._operation(f, m)
        self.trace(m.name if m else "sim", f"fault over: {f.kind}")

    async def _die_mid_write(self, f: Fault, m: SimMachine) -> None:
        """Crash machine ``m`` (a role change follows), and crash whichever coordinator is
        first caught between its role write's first statement and its COMMIT."""
        victims: list[SimMachine] = []

        def hook(client: str) -> None:
            self.server.mid_write = None
            victim = next(x for x in self.machines if x.name == client)
            self.trace(client, "dies in the middle of its role write")
            victim.crash()
            victims.append(victim)

        self.server.mid_write = hook
        if m.alive:
            m.crash()
            victims.append(m)
        await asyncio.sleep(f.duration)
        self.server.mid_write = None
        for victim in victims:
            if not victim.alive:
                victim.boot()

    async def _operation(self, f: Fault, m: SimMachine | None) -> None:
        """An operator's request on some machine that is up (retried while none can write
        it), then its end after the fault's duration."""

        async def ask(on: bool) -> None:
            for _ in range(60):
                up = [x for x in self.machines if x.up and x.roles and x.roles.ops]
                if up:
                    ops = self.rng.choice(up).roles.ops  # type: ignore[union-attr]
                    assert ops is not None
                    try:
                        if f.kind == "pause":
                            await ops.set_pause(on, "the simulator")
                            self.paused_since = self.loop.time() if on else None
                        else:
                            assert m is not None
                            await ops.set_maintenance(m.name, on, "the simulator")
                        return
                    except Exception as exc:  # the datastore said no: try again
                        self.trace("sim", f"the request failed ({exc}); retrying")
                await asyncio.sleep(2.0)

        await ask(True)
        await asyncio.sleep(f.duration)
        await ask(False)

    async def _outage(self, f: Fault, m: SimMachine | None) -> None:
        how = f.how or "blackhole"
        if m is None:
            self.db_down = how
        else:
            m.link.down = how
            m.partitioned = f.kind == "partition"
        self._links_changed()
        await asyncio.sleep(f.duration)
        if m is None:
            self.db_down = ""
        else:
            m.link.down = ""
            m.partitioned = False
        self._links_changed()

    def _links_changed(self) -> None:
        for x in self.machines:
            x.host.link_changed()

    def run(self) -> str | None:
        """Run the plan; return the violation (None: every invariant held)."""
        logger = logging.getLogger("k3snoded")
        handler = _TraceHandler(self)
        saved = (logger.level, logger.propagate, list(logger.handlers))
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)
        self.loop.on_step = self.on_step
        self.loop.hold = self._hold
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(self._on_error)
        try:
            self.loop.run_until_complete(self._main())
        except RuntimeError:
            if self.violation is None:  # not stopped by fail(): a real error
                raise
        finally:
            self.loop.hold = None
            for m in self.machines:
                m.thaw()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            with contextlib.suppress(RuntimeError, asyncio.CancelledError):
                self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.on_step = None
            asyncio.set_event_loop(None)
            self.loop.close()
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
            logger.handlers = saved[2]
        return self.violation


def machine_config(plan: Plan, i: int, workdir: Path) -> Config:
    name = f"m{i + 1}"
    root = workdir / name
    pref = plan.preferences[i]
    return Config(
        node=NodeConfig(
            name=name,
            role=pref,
            address=f"198.18.0.{11 + i}",
            interface="eth0",
            state_dir=root / "state",
            run_dir=root / "run",
        ),
        k3s=K3sConfig(
            binary=Path("/usr/local/bin/k3s"),
            data_dir=root / "k3s",
            ready_timeout=plan.ready_timeout,
            stop_timeout=plan.stop_timeout,
            restart_backoff_max=plan.backoff_max,
        ),
        datastore=DatastoreConfig(endpoint="postgres://k3s:k3s@198.18.0.240/k3s"),
        upgrade=UpgradeConfig(stable_for=5.0, drain_timeout=5.0),
        coordination=CoordinationConfig(),
        servers=ServersConfig(count=plan.count),
        registration=RegistrationConfig(
            address=plan.registration,
            vip=VipConfig(enabled=bool(plan.registration), interface="eth0"),
        ),
    )


def reload_config(cfg: Config, f: Fault) -> Config:
    """The config a SIGHUP fault installs: another servers.count, or new node labels."""
    if f.how == "count":
        return replace(cfg, servers=replace(cfg.servers, count=int(f.arg)))
    labels = (f"sim/rev={int(f.arg)}",)
    return replace(cfg, node=replace(cfg.node, labels=labels))
