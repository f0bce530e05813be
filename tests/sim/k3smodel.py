"""A model of k3s v1.31's observable life (``reference/k3s-behaviour.md``, its Corrections).

``K3sHost`` is what one machine's k3s does, whoever supervises it; ``K3sCluster`` is what the
servers share through the datastore (the bootstrap key and the controller-manager lease).

* A server connects to the datastore 1-3 s after exec (while it cannot, it retries every
  second; a refused MySQL connection is fatal, exit 1), then bootstraps: it loads the cluster
  CA, or locks the bootstrap key when there is none, or waits while another server holds the
  lock (polled every 5 s; after 5 polls the lock is taken over). 2-5 s later its apiserver is
  up: the lock holder saves the CA, and READY=1 follows once ``/readyz`` answers, i.e. while it
  reaches the datastore. ``/readyz`` fails while its datastore does not answer within 2 s (down,
  cut off, or a slow statement); ``healthy`` follows it, and the supervisor reports it.
* Datastore loss: only the holder of the controller-manager lease exits, status 1, once it
  could not renew for 10 s (renewals every 2 s); a lease not renewed for 15 s is taken by
  another ready server that reaches the datastore. Other servers keep running, not ready.
* An agent sends READY=1 only once a server's ``/readyz`` answers through its load balancer
  (a server it can reach, ready and reaching the datastore); it gives up after 15 minutes.
* SIGTERM: the components are cancelled after a 5 s delay, so a stop takes 5-6 s (a "slow
  stop" 6-13 s, SIGKILLed at ``stop_timeout``). A SIGTERMed server still finishes the
  bootstrap step it is in (it may still lock the key, or save the CA) but sends no READY=1.
* Faults of a host: ``never_ready`` (starts, never READY=1) and ``crash_loop`` (exits 1 a few
  seconds after each start).

What the daemon must keep (the invariants in ``world.py``) is stricter than what k3s needs:
k3s's lock keeps one CA when servers start together, but k3snoded still starts the first
server alone. A second CA (a server that saved its own over another's) is reported here.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from k3snoded.model import Role
from k3snoded.process import ChildSpec

if TYPE_CHECKING:
    from tests.sim.world import SimMachine, World

SHUTDOWN_DELAY = 5.0  # pkg/util/context.go: SIGTERM cancels the components after 5 s
READYZ_TIMEOUT = 2.0  # the apiserver's etcd readiness check
LOCK_POLL, LOCK_ATTEMPTS = 5.0, 5  # pkg/cluster/storage.go (Corrections table)
LEADER_RETRY, LEADER_RENEW_DEADLINE, LEADER_LEASE = 2.0, 10.0, 15.0  # controller-manager
AGENT_GIVE_UP = 900.0  # WaitForAPIServerReady: fatal after 15 minutes
OLD, NEW, BAD = "v1.31.4+k3s1", "v1.31.5+k3s1", "v1.31.6+k3s1"  # BAD: a build that panics


@dataclass(eq=False)
class Proc:
    """One k3s process."""

    pid: int
    spec: ChildSpec
    role: Role
    started: float
    config_version: int
    first_start: bool  # a server started before the cluster had a CA, and without one yet
    version: str = OLD  # the release of the binary it was started from
    state: str = "starting"  # starting | ready (READY=1 sent) | stopping | exited
    exit_status: int | None = None
    healthy: bool = False  # a server's /readyz answers 200
    made_ca: bool = False  # it locked the bootstrap key: it makes its own CA
    attempts: int = 0  # polls of a bootstrap key another server locked

    @property
    def alive(self) -> bool:
        return self.state != "exited"

    @property
    def serving(self) -> bool:
        """A server whose apiserver is up and answers /readyz."""
        return self.role is Role.SERVER and self.state == "ready" and self.healthy


def role_of(spec: ChildSpec) -> Role:
    return Role.SERVER if spec.argv[1] == "server" else Role.AGENT


class K3sCluster:
    """What the k3s servers share in the datastore: the bootstrap lock (the CA itself is
    ``Server.cluster_ca``) and the controller-manager lease, renewed on a 2 s tick."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.lock: Proc | None = None  # the bootstrap key, locked and still empty
        self.leader: Proc | None = None
        self.renewed = 0.0  # the leader's last renewal
        self.lease_until = 0.0
        self.deposed: list[Proc] = []

    def start(self) -> None:
        self.world.loop.call_later(LEADER_RETRY, self._tick)

    def _machine(self, proc: Proc) -> SimMachine | None:
        return next((m for m in self.world.machines if m.host.proc is proc), None)

    def _tick(self) -> None:
        self.world.loop.call_later(LEADER_RETRY, self._tick)
        now = self.world.now
        for proc in list(self.deposed):  # a leader frozen past its renew deadline, thawed
            m = self._machine(proc)
            if m is None or not proc.alive:
                self.deposed.remove(proc)
            elif not m.frozen:
                self.deposed.remove(proc)
                m.host.exit(proc, 1, "leader election lost (controller-manager lease)")
        leader = self.leader
        m = self._machine(leader) if leader is not None else None
        if leader is not None and (m is None or not leader.alive):
            self.leader = None  # exited or died: the lease expires 15 s after its renewal
        elif leader is not None and m is not None and not m.frozen:
            if now - self.renewed >= LEADER_RENEW_DEADLINE:
                self.leader = None
                m.host.exit(leader, 1, "leader election lost (controller-manager lease)")
            elif m.host.reaches_datastore(LEADER_RETRY):
                self.renewed, self.lease_until = now, now + LEADER_LEASE
        if now < self.lease_until:
            return
        for x in self.world.machines:  # a lease not renewed for 15 s: another server takes it
            cand = x.host.proc
            if cand is None or cand is self.leader or not x.alive or x.frozen:
                continue
            if cand.state == "ready" and cand.role is Role.SERVER and x.host.reaches_datastore():
                if self.leader is not None:
                    self.deposed.append(self.leader)  # frozen: it finds out when thawed
                if self.renewed:
                    self.world.trace(x.name, "k3s took the controller-manager lease")
                self.leader, self.renewed, self.lease_until = cand, now, now + LEADER_LEASE
                return


class K3sHost:
    """The k3s processes of one machine (at most one at a time)."""

    def __init__(self, machine: SimMachine) -> None:
        self.machine = machine
        self.proc: Proc | None = None
        self.fault = "none"  # none | never_ready | crash_loop
        self.installed = OLD  # the release at k3s.binary; .next and .previous beside it
        self.version_takes = 0.0  # seconds ``k3s --version`` takes (an exec of the binary)
        self.staged = ""
        self.previous = ""
        self.slow_stop = False
        self._watchers: list[Callable[[Proc], None]] = []  # told when a process changes
        self._probing = False

    @property
    def cluster(self) -> K3sCluster:
        return self.machine.world.k3s

    def watch(self, cb: Callable[[Proc], None]) -> None:
        self._watchers = [cb]

    def _changed(self, proc: Proc) -> None:
        for cb in list(self._watchers):
            cb(proc)

    def reaches_datastore(self, within: float = READYZ_TIMEOUT) -> bool:
        """One datastore round trip answered within ``within`` seconds (draws a delay while
        the datastore is slow)."""
        link = self.machine.link
        if link.state != "up":
            return False
        if not link.slow and not self.machine.world.db_slow:
            return True
        return link.delay() <= within and not link.answer_lost()

    # ---- life ---------------------------------------------------------------------------------
    def start(self, spec: ChildSpec) -> Proc:
        world = self.machine.world
        role = role_of(spec)
        first = role is Role.SERVER and world.server.cluster_ca is None
        proc = Proc(
            world.next_pid(),
            spec,
            role,
            world.now,
            self.machine.config_version,
            first,
            version=self.installed,
        )
        self.proc = proc
        world.trace(self.machine.name, f"k3s {role.value} started (pid {proc.pid})")
        if proc.version == BAD:  # panics at once (exit 2)
            self.machine.later_k3s(world.rng.uniform(0.05, 0.3), self.exit, proc, 2, "panic")
        elif self.fault == "crash_loop":
            self.machine.later_k3s(world.rng.uniform(1.0, 3.0), self.exit, proc, 1, "")
        elif role is Role.SERVER:
            self.machine.later_k3s(world.rng.uniform(1.0, 3.0), self._connect, proc)
        else:
            self.machine.later_k3s(world.rng.uniform(1.0, 3.0), self._try_ready, proc)
            self.machine.later_k3s(AGENT_GIVE_UP, self._give_up, proc)
        return proc

    def _current(self, proc: Proc) -> bool:
        return proc is self.proc and proc.state in ("starting", "stopping")

    def _connect(self, proc: Proc) -> None:
        """kine connects, then storageBootstrap: load the CA, lock the key, or wait."""
        if not self._current(proc):
            return
        world, cluster = self.machine.world, self.cluster
        state = self.machine.link.state
        if state == "refuse" and world.server.dialect == "mysql":
            self.exit(proc, 1, "datastore connection refused (fatal)")
            return
        if state != "up":
            self.machine.later_k3s(1.0, self._connect, proc)
            return
        if world.server.cluster_ca is None:
            if cluster.lock is not None and cluster.lock is not proc:
                # "Bootstrap key is locked - waiting for data to be populated by another
                # server": polled; after 5 polls the lock (maybe a dead holder's) is retaken.
                proc.attempts += 1
                if proc.attempts < LOCK_ATTEMPTS:
                    self.machine.later_k3s(LOCK_POLL, self._connect, proc)
                    return
                world.trace(self.machine.name, "k3s: bootstrap key lock timed out, retaking it")
            cluster.lock, proc.made_ca = proc, True
        else:
            proc.first_start = False  # loaded the CA: a joining server
        self.machine.later_k3s(world.rng.uniform(2.0, 5.0), self._apiserver, proc)

    def _apiserver(self, proc: Proc) -> None:
        if not self._current(proc):
            return
        world, cluster = self.machine.world, self.cluster
        if proc.made_ca:
            if world.server.cluster_ca is None:
                world.server.cluster_ca = self.machine.name
                world.trace(self.machine.name, "k3s wrote the cluster CA (bootstrap done)")
            elif world.server.cluster_ca != self.machine.name:
                world.fail(self.machine.name, "k3s saved a second cluster CA")
                return
            if cluster.lock is proc:
                cluster.lock = None
            proc.first_start = False
        if proc.state == "starting":
            self._try_ready(proc)

    def _try_ready(self, proc: Proc) -> None:
        if proc is not self.proc or proc.state != "starting" or self.fault != "none":
            return
        world = self.machine.world
        if proc.role is Role.SERVER:
            ok = self.reaches_datastore()
        else:
            ok = world.apiserver_for(self.machine)
        if not ok:
            self.machine.later_k3s(1.0, self._try_ready, proc)
            return
        proc.state, proc.healthy = "ready", proc.role is Role.SERVER
        if proc.role is Role.SERVER:  # k3s writes server/token with its CA hash (capin.py)
            self._write_server_token(world.server.cluster_ca or self.machine.name)
        world.trace(self.machine.name, f"k3s {proc.role.value} ready (pid {proc.pid})")
        self._changed(proc)
        self.link_changed()

    def _write_server_token(self, ca: str) -> None:
        server = self.machine.cfg.k3s.data_dir / "server"
        server.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(ca.encode()).hexdigest()
        (server / "token").write_text(f"K10{digest}::server:sim\n")

    def _give_up(self, proc: Proc) -> None:
        if proc is self.proc and proc.state == "starting":
            self.exit(proc, 1, "no apiserver answered within 15 minutes")

    def exit(self, proc: Proc, status: int, why: str) -> None:
        if proc is not self.proc or not proc.alive:
            return
        proc.state, proc.exit_status = "exited", status
        self.proc = None
        note = f": {why}" if why else ""
        self.machine.world.trace(self.machine.name, f"k3s exited {status} (pid {proc.pid}){note}")
        self._changed(proc)

    def stop(self, proc: Proc, done: Callable[[], None]) -> None:
        """SIGTERM: the process exits after the delayed cancel (SIGKILL at stop_timeout)."""
        if not proc.alive:
            done()
            return
        proc.state = "stopping"
        rng = self.machine.world.rng
        took = SHUTDOWN_DELAY + (rng.uniform(1.0, 8.0) if self.slow_stop else rng.uniform(0.1, 1.0))
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
        self._probing = False

    # ---- health -------------------------------------------------------------------------------
    def link_changed(self) -> None:
        """The path to the datastore changed (down, up, slow): a ready server's /readyz is
        probed again, and every second while the datastore is slow."""
        proc = self.proc
        if proc is None or proc.role is not Role.SERVER or proc.state != "ready":
            return
        if not self._probing:
            self._probing = True
            self.machine.later_k3s(self.machine.world.rng.uniform(0.0, 1.0), self._probe, proc)

    def _probe(self, proc: Proc) -> None:
        self._probing = False
        if proc is not self.proc or proc.state != "ready":
            return
        ok = self.reaches_datastore()
        if ok != proc.healthy:
            proc.healthy = ok
            self._changed(proc)
        link = self.machine.link
        if link.state == "up" and (link.slow or self.machine.world.db_slow):
            self._probing = True
            self.machine.later_k3s(1.0, self._probe, proc)


class SimBinary:
    """``upgrader.Binary`` over a ``K3sHost``: staging takes a download's time."""

    def __init__(self, host: K3sHost) -> None:
        self.host = host

    async def version(self) -> str:
        if self.host.version_takes:
            await asyncio.sleep(self.host.version_takes)
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
