"""A model of k3s's observable life, and of the supervisor that runs it.

``K3sHost`` is what one machine's k3s does, whoever supervises it: a started process reaches
READY after a start delay (a server only while it reaches the datastore; an agent only while
some server is ready), a server that loses the datastore for 15 s exits 255 (its leader
election), a stop takes from a fraction of a second to the "slow stop" of 5-8 s (SIGKILL at
``stop_timeout``), and a host can be broken: ``never_ready`` (starts, never READY) or
``crash_loop`` (exits 1 a few seconds after each start). The first server started on a cluster
with no bootstrap data is "inside the first start" until READY, when it writes the cluster CA.

``SupervisorModel`` exposes what ``roles.RoleSource`` uses of ``k3snoded.supervisor.Supervisor``
(``want``, ``status``, ``on_change``) with its rules: level-triggered, a different spec replaces
the child, READY within ``ready_timeout`` or stop and retry, restarts with exponential backoff
(1 s doubling to ``restart_backoff_max``), a crash loop after 3 quick exits, and adoption: until
the first ``want`` a child left by a previous daemon is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from k3snoded.model import ChildState, Role
from k3snoded.process import ChildSpec, ChildStatus

if TYPE_CHECKING:
    from tests.sim.world import SimMachine

LEADER_ELECTION_LOSS = 15.0  # a real k3s server exits 255 this long after losing its datastore
OLD, NEW, BAD = "v1.31.4+k3s1", "v1.31.5+k3s1", "v1.31.6+k3s1"  # BAD: a build that panics


@dataclass(eq=False)
class Proc:
    """One k3s process."""

    pid: int
    spec: ChildSpec
    role: Role
    started: float
    config_version: int
    first_start: bool  # a server started while the cluster had no bootstrap data
    version: str = OLD  # the release of the binary it was started from
    state: str = "starting"  # starting | ready | stopping | exited
    exit_status: int | None = None

    @property
    def alive(self) -> bool:
        return self.state != "exited"


def role_of(spec: ChildSpec) -> Role:
    return Role.SERVER if spec.argv[1] == "server" else Role.AGENT


class K3sHost:
    """The k3s processes of one machine (at most one at a time)."""

    def __init__(self, machine: SimMachine) -> None:
        self.machine = machine
        self.proc: Proc | None = None
        self.fault = "none"  # none | never_ready | crash_loop
        self.installed = OLD  # the release at k3s.binary; .next and .previous beside it
        self.staged = ""
        self.previous = ""
        self.slow_stop = False
        self._watchers: list[Callable[[Proc], None]] = []  # told when a process changes
        self._loss_timer: asyncio.TimerHandle | None = None

    def watch(self, cb: Callable[[Proc], None]) -> None:
        self._watchers = [cb]

    def _changed(self, proc: Proc) -> None:
        for cb in list(self._watchers):
            cb(proc)

    def start(self, spec: ChildSpec) -> Proc:
        world = self.machine.world
        role = role_of(spec)
        proc = Proc(
            world.next_pid(),
            spec,
            role,
            world.now,
            self.machine.config_version,
            first_start=role is Role.SERVER and world.server.cluster_ca is None,
            version=self.installed,
        )
        self.proc = proc
        world.trace(self.machine.name, f"k3s {role.value} started (pid {proc.pid})")
        if proc.version == BAD:  # panics at once (exit 2)
            self.machine.later_k3s(world.rng.uniform(0.05, 0.3), self._exit, proc, 2)
        elif self.fault == "crash_loop":
            self.machine.later_k3s(world.rng.uniform(1.0, 3.0), self._exit, proc, 1)
        else:
            delay = world.rng.uniform(3.0, 8.0) if role is Role.SERVER else world.rng.uniform(1, 3)
            self.machine.later_k3s(delay, self._try_ready, proc)
        return proc

    def _try_ready(self, proc: Proc) -> None:
        if proc is not self.proc or proc.state != "starting" or self.fault != "none":
            return
        world = self.machine.world
        if proc.role is Role.SERVER:
            ok = self.machine.link.state == "up"
        else:
            ok = world.any_ready_server()
        if not ok:
            self.machine.later_k3s(1.0, self._try_ready, proc)
            return
        proc.state = "ready"
        if proc.role is Role.SERVER and world.server.cluster_ca is None:
            world.server.cluster_ca = self.machine.name
            world.trace(self.machine.name, "k3s wrote the cluster CA (bootstrap done)")
        proc.first_start = False
        world.trace(self.machine.name, f"k3s {proc.role.value} ready (pid {proc.pid})")
        self._changed(proc)
        self.link_changed()

    def _exit(self, proc: Proc, status: int) -> None:
        if proc is not self.proc or not proc.alive:
            return
        proc.state, proc.exit_status = "exited", status
        self.proc = None
        self.machine.world.trace(self.machine.name, f"k3s exited {status} (pid {proc.pid})")
        self._changed(proc)

    def stop(self, proc: Proc, done: Callable[[], None]) -> None:
        """SIGTERM; the process exits after its stop time (SIGKILL at stop_timeout)."""
        if not proc.alive:
            done()
            return
        proc.state = "stopping"
        rng = self.machine.world.rng
        took = rng.uniform(5.0, 8.0) if self.slow_stop else rng.uniform(0.1, 1.0)
        took = min(took, proc.spec.stop_timeout)

        def gone() -> None:
            if proc.alive:
                proc.state, proc.exit_status = "exited", 0
                if self.proc is proc:
                    self.proc = None
                self.machine.world.trace(self.machine.name, f"k3s stopped (pid {proc.pid})")
                self._changed(proc)
            done()

        self.machine.later_k3s(took, gone)

    def kill(self) -> None:
        """The machine died: its k3s with it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.alive:
            proc.state = "exited"
        if self._loss_timer is not None:
            self._loss_timer.cancel()
            self._loss_timer = None

    def link_changed(self) -> None:
        """The machine's path to the datastore changed: a ready server exits 255 after 15 s
        without it (k3s's leader election), and comes back by itself on a restart."""
        proc = self.proc
        down = self.machine.link.state != "up"
        if proc is None or proc.role is not Role.SERVER or proc.state != "ready" or not down:
            if self._loss_timer is not None:
                self._loss_timer.cancel()
                self._loss_timer = None
            return
        if self._loss_timer is None:
            self._loss_timer = self.machine.later_k3s(LEADER_ELECTION_LOSS, self._lost, proc)

    def _lost(self, proc: Proc) -> None:
        self._loss_timer = None
        if self.machine.link.state != "up":
            self._exit(proc, 255)


class _Unset:
    pass


_UNSET = _Unset()


class SupervisorModel:
    """``want`` / ``status`` / ``on_change`` over a ``K3sHost``, with the supervisor's rules."""

    def __init__(self, machine: SimMachine, backoff_max: float) -> None:
        self.machine = machine
        self.host = machine.host
        self._wanted: ChildSpec | _Unset | None = _UNSET
        self._callbacks: list[Callable[[ChildStatus], None]] = []
        self._status = ChildStatus()
        self._backoff = 1.0
        self._backoff_max = backoff_max
        self._quick_exits = 0
        self._restarts = 0
        self._retry_at = 0.0
        self._stopping = False
        self._scheduled = False
        self.closed = False
        self.host.watch(self._proc_changed)
        proc = self.host.proc
        if proc is not None and proc.alive:  # adopted: kept until the first want()
            ready = proc.state == "ready"
            self._set(ChildState.READY if ready else ChildState.STARTING, ready=ready)

    @property
    def status(self) -> ChildStatus:
        return self._status

    def on_change(self, cb: Callable[[ChildStatus], None]) -> None:
        self._callbacks.append(cb)

    def want(self, spec: ChildSpec | None) -> None:
        if spec != self._wanted:
            self._wanted = spec
            self._kick()

    def close(self) -> None:
        self.closed = True

    # ---- reconcile ---------------------------------------------------------------------------
    def _kick(self, delay: float = 0.0) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.machine.later_daemon(delay, self._reconcile)

    def _reconcile(self) -> None:
        self._scheduled = False
        if self.closed or self._stopping:
            return
        wanted, proc, world = self._wanted, self.host.proc, self.machine.world
        if isinstance(wanted, _Unset):
            return
        if proc is not None and proc.alive:
            if wanted is None or wanted.identity != proc.spec.identity:
                world.k3s_stopped_by_daemon(self.machine, proc, wanted)
                self._stopping = True
                self._set(ChildState.STOPPING)
                self.host.stop(proc, self._stopped)
            return
        if wanted is None:
            self._set(ChildState.STOPPED)
            return
        if self._retry_at - world.now > 1e-6:
            self._kick(self._retry_at - world.now)
            return
        proc = self.host.start(wanted)
        self._set(ChildState.STARTING)
        if wanted.ready_timeout is not None:  # an agent has none: it is never killed for it
            self.machine.later_daemon(wanted.ready_timeout, self._ready_deadline, proc)

    def _stopped(self) -> None:
        self._stopping = False
        if self.closed:
            return
        self._set(ChildState.STOPPED)
        self._kick()

    def _ready_deadline(self, proc: Proc) -> None:
        if self.closed or proc is not self.host.proc or proc.state != "starting":
            return
        self._stopping = True
        self._set(ChildState.STOPPING)

        def stopped() -> None:
            self._stopping = False
            self._exited(proc, quick=True)

        self.host.stop(proc, stopped)

    def _proc_changed(self, proc: Proc) -> None:
        if self.closed:
            return
        if proc.state == "ready":
            self._set(ChildState.READY, ready=True)
        elif proc.state == "exited" and not self._stopping:
            self._exited(proc, quick=self.machine.world.now - proc.started < 60.0)

    def _exited(self, proc: Proc, *, quick: bool) -> None:
        if quick:
            self._quick_exits += 1
        else:
            self._backoff, self._quick_exits = 1.0, 0
        self._restarts += 1
        self._retry_at = self.machine.world.now + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)
        self._set(ChildState.BACKOFF)
        self._kick()

    def _set(self, state: ChildState, *, ready: bool = False) -> None:
        proc = self.host.proc
        self._status = ChildStatus(
            state=state,
            pid=proc.pid if proc is not None and proc.alive else None,
            ready=ready,
            restarts=self._restarts,
            crash_loop=self._quick_exits >= 3,
            since=self.machine.world.now,
        )
        for cb in list(self._callbacks):
            cb(self._status)


class SimBinary:
    """``upgrader.Binary`` over a ``K3sHost``: staging takes a download's time."""

    def __init__(self, host: K3sHost) -> None:
        self.host = host

    async def version(self) -> str:
        return self.host.installed

    async def stage(self, version: str) -> None:
        await asyncio.sleep(self.host.machine.world.rng.uniform(0.2, 3.0))
        self.host.staged = version

    async def staged(self) -> str:
        return self.host.staged

    async def swap(self) -> None:
        host = self.host
        host.previous, host.installed, host.staged = host.installed, host.staged, ""

    async def restore(self) -> bool:
        host = self.host
        if not host.previous:
            return False
        host.installed, host.previous = host.previous, ""
        return True


class SimKube:
    """``upgrader.Kube``: cordon, drain and uncordon take a moment; no pods are modelled."""

    def __init__(self, machine: SimMachine) -> None:
        self.machine = machine

    async def run(self, op: str, node: str, limit: float = 0.0, *, forward: bool = True) -> str:
        await asyncio.sleep(self.machine.world.rng.uniform(0.01, min(2.0, max(limit, 0.1))))
        return f"{op} {node}"
