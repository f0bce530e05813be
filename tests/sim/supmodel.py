"""A model of ``k3snoded.supervisor.Supervisor`` over a ``K3sHost``, with its rules.

It exposes what ``roles.RoleSource`` uses (``want``, ``status``, ``on_change``) and follows
``supervisor.py`` (decision 0005): level-triggered; a different spec replaces the child; a
server is ready once it sent READY=1 and its ``/readyz`` answers, within ``ready_timeout`` of
its start (else it is stopped and retried), and from then on ``ready`` follows ``/readyz``
without the child ever being killed for it; an agent's readiness is its READY=1 alone, with
no deadline. An exit restarts the child after a backoff (1 s doubling to
``restart_backoff_max``, reset after 60 s up; three quick exits are a crash loop) when it is
still the wanted spec, and the wanted one starts at once when it is another. Adoption: a
child left by a previous daemon is kept until the first ``want``; READY=1 is assumed (it is
not resent), so an adopted agent is ready at once and an adopted server once ``/readyz``
answers, timed from adoption.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from k3snoded.model import ChildState, Role
from k3snoded.process import ChildSpec, ChildStatus
from tests.sim.k3smodel import Proc

if TYPE_CHECKING:
    from tests.sim.world import SimMachine

STABLE_AFTER = 60.0


class _Unset:
    pass


_UNSET = _Unset()


class SupervisorModel:
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
        self._retry_identity = ""
        self._stopping = False
        self._scheduled = False
        self._confirmed: Proc | None = None  # readiness confirmed once for this child
        self._since = 0.0  # when this child was started or adopted
        self._adopted: Proc | None = None  # its READY=1 is assumed
        self.closed = False
        self.host.watch(self._proc_changed)
        proc = self.host.proc
        if proc is not None and proc.alive:  # adopted: kept until the first want()
            self._since, self._adopted = machine.world.now, proc
            self._set(ChildState.STARTING)
            self._confirm(proc)
            if self._confirmed is not proc and proc.spec.ready_timeout is not None:
                machine.later_daemon(proc.spec.ready_timeout, self._ready_deadline, proc)

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
                self._stop(proc, quick=None)
            return
        if wanted is None:
            self._set(ChildState.STOPPED)
            return
        wait = self._retry_at - world.now
        if wait > 1e-6 and wanted.identity == self._retry_identity:
            self._kick(wait)
            return
        proc = self.host.start(wanted)
        self._since = world.now
        self._set(ChildState.STARTING)
        if wanted.ready_timeout is not None:  # an agent has none: it is never killed for it
            self.machine.later_daemon(wanted.ready_timeout, self._ready_deadline, proc)

    def _stop(self, proc: Proc, *, quick: bool | None) -> None:
        """SIGTERM; once it is gone: restart it (``quick`` not None: it failed) or not."""
        self._stopping = True
        self._set(ChildState.STOPPING)

        def stopped() -> None:
            self._stopping = False
            if self.closed:
                return
            if quick is None:
                self._set(ChildState.STOPPED)
                self._kick()
            else:
                self._exited(proc, quick=quick)

        self.host.stop(proc, stopped)

    def _ready_deadline(self, proc: Proc) -> None:
        if self.closed or proc is not self.host.proc or not proc.alive or self._stopping:
            return
        if self._confirmed is not proc:
            self._stop(proc, quick=True)

    def _confirm(self, proc: Proc) -> None:
        """READY=1 (assumed for an adopted child) and, for a server, /readyz answering."""
        notified = proc is self._adopted or proc.state == "ready"
        if self._confirmed is proc or not notified:
            return
        if proc.role is Role.SERVER and not proc.serving:
            return
        self._confirmed = proc
        self._set(ChildState.READY, ready=True)

    def _proc_changed(self, proc: Proc) -> None:
        if self.closed or (proc is not self.host.proc and proc.alive):
            return
        if proc.state == "exited":
            if not self._stopping:
                self._exited(proc, quick=self.machine.world.now - self._since < STABLE_AFTER)
            return
        if self._stopping:
            return
        if self._confirmed is not proc:
            self._confirm(proc)
        elif proc.role is Role.SERVER and self._status.ready != proc.serving:
            self._set(ChildState.READY, ready=proc.serving)

    def _exited(self, proc: Proc, *, quick: bool) -> None:
        if quick:
            self._quick_exits += 1
        else:
            self._backoff, self._quick_exits = 1.0, 0
        wanted = self._wanted
        if isinstance(wanted, _Unset) or wanted is None or wanted.identity != proc.spec.identity:
            self._set(ChildState.STOPPED)  # not the wanted child: no backoff for another
            self._kick()
            return
        self._restarts += 1
        self._retry_at = self.machine.world.now + self._backoff
        self._retry_identity = wanted.identity
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
