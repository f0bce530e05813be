"""Generic child lifecycle: start, readiness, stop, backoff, adoption. Knows nothing about k3s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from k3snoded.errors import SupervisorError
from k3snoded.model import ChildState
from k3snoded.notify import NotifyListener, NotifyMessage
from k3snoded.process import (
    ChildSpec,
    ChildStatus,
    HttpProbe,
    PidRecord,
    ProbeTls,
    boot_id,
    describe_exit,
    insecure_tls_context,
    process_starttime,
    read_pidfile,
    remove_pidfile,
    session_of,
    write_pidfile,
)

__all__ = ["ChildSpec", "ChildStatus", "ProbeTls", "Supervisor"]

log = logging.getLogger(__name__)


class _Unset:
    """No ``want()`` yet: keep whatever runs (an adopted child), start nothing."""


_UNSET = _Unset()


@dataclass(eq=False)
class _Child:
    """A running child, started here or adopted. Mutable bookkeeping, private to the loop."""

    pid: int
    pidfd: int
    identity: str
    ready_url: str | None
    ready_timeout: float | None  # None: may take as long as it needs
    stop_timeout: float
    adopted: bool
    started: float  # monotonic
    probe_tls: ProbeTls | None = None
    popen: subprocess.Popen[bytes] | None = None
    notified: bool = False  # READY=1 received (assumed for an adopted child)
    confirmed: bool = False  # readiness confirmed once; from then on probes track health
    healthy: bool = False
    stable: bool = False  # up long enough to reset the backoff
    next_probe: float = 0.0
    status: int | None = None  # exit status once reaped; 128+N for signal N
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    """Keeps one child process in the wanted state (level-triggered), in its own session.

    ``want(spec)`` says what should run; ``run()`` makes it so and keeps it so: it starts the
    child with a private NOTIFY_SOCKET, waits for READY=1 and a 200 from ``spec.ready_url``,
    then keeps probing that URL (``status.ready`` follows it; the child is not killed for it),
    restarts the child with exponential backoff when it exits, and adopts a child left running
    by a previous daemon (``<run_dir>/<name>.pid``: pid, start time, spec identity) instead of
    starting a second one. Stopping sends SIGTERM to the child alone, so that its descendants
    (containerd shims, workloads) survive as with ``KillMode=process``; only after
    ``stop_timeout`` is the whole process group killed.

    States: STARTING (exec or adoption until readiness is confirmed), READY (confirmed once;
    ``ready`` then follows the probes, so READY with ``ready=False`` is a running child whose
    readiness probe fails), BACKOFF (exited; restart pending), STOPPING, STOPPED. Until the first
    ``want()`` an adopted child is kept and nothing is started.

    Cancelling ``run()`` leaves the child running (it will be adopted); ``shutdown()`` is the
    orderly end. All methods must be called from the event loop's thread. ``run_dir`` should be
    on tmpfs (``/run``) and short: the notify socket path must fit in 107 bytes.
    """

    def __init__(
        self,
        name: str,
        run_dir: Path,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        ready_probe_interval: float = 1.0,
        probe_timeout: float = 2.0,
        stable_after: float = 60.0,
        crash_loop_exits: int = 3,
        output: Callable[[], int | None] | None = None,
    ) -> None:
        self.name = name
        self._output = output  # a descriptor for the child's stdout+stderr (None: inherit ours)
        self.run_dir = run_dir
        self.pidfile = run_dir / f"{name}.pid"
        self.notify_socket = run_dir / f"{name}.notify"
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._probe_interval = ready_probe_interval
        self._probe_timeout = probe_timeout
        self._stable_after = stable_after
        self._crash_loop_exits = crash_loop_exits
        self._tls = insecure_tls_context()
        self._probes: dict[tuple[str, ProbeTls | None], HttpProbe] = {}  # one kept-alive each
        self._wanted: ChildSpec | _Unset | None = _UNSET
        self._kick = asyncio.Event()
        self._shutdown: bool | None = None  # None: keep running; else stop the child or not
        self._running = False
        self._done = asyncio.Event()
        self._child: _Child | None = None
        self._backoff = backoff_initial
        self._quick_exits = 0
        self._restarts = 0
        self._last_exit: int | None = None
        self._retry_at = 0.0
        self._retry_identity = ""
        self._status = ChildStatus(since=time.time())
        self._callbacks: list[Callable[[ChildStatus], None]] = []

    # ---- public API -------------------------------------------------------------------------

    @property
    def status(self) -> ChildStatus:
        return self._status

    def on_change(self, cb: Callable[[ChildStatus], None]) -> None:
        """Call ``cb(status)`` after every status change (from the loop; must not block)."""
        self._callbacks.append(cb)

    def want(self, spec: ChildSpec | None) -> None:
        """The desired state: run ``spec`` (a different one replaces the running child) or none."""
        if spec != self._wanted:
            self._wanted = spec
            self._kick.set()

    async def shutdown(self, stop_child: bool = True) -> None:
        """End ``run()``, stopping the child first unless ``stop_child`` is False."""
        self._shutdown = stop_child or bool(self._shutdown)
        self._kick.set()
        if self._running:
            await self._done.wait()

    async def run(self) -> None:
        """The reconcile loop; returns after ``shutdown()``."""
        self._running = True
        self._done.clear()
        try:
            self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            async with NotifyListener(self.notify_socket, self._on_notify):
                await self._adopt()
                while True:
                    if self._shutdown is not None:
                        await self._finish(self._shutdown)
                        return
                    await self._step()
        finally:
            self._forget_child()
            self._running = False
            self._done.set()

    # ---- the loop ---------------------------------------------------------------------------

    async def _step(self) -> None:
        """Observe, decide one thing, act (or wait for something to change)."""
        child, wanted, now = self._child, self._wanted, time.monotonic()
        if child is not None:
            if child.exited.is_set():
                self._child_exited(child)
            elif not isinstance(wanted, _Unset) and (
                wanted is None or wanted.identity != child.identity
            ):
                why = "no longer wanted" if wanted is None else "its spec changed"
                await self._stop(child, why)
            elif not child.confirmed:
                await self._confirm_ready(child, now)
            else:
                await self._watch_health(child, now)
        elif isinstance(wanted, _Unset) or wanted is None:
            if self._status.state is not ChildState.STOPPED:
                self._set(ChildState.STOPPED, message=f"{self.name} is not wanted")
            await self._wait(3600.0)
        elif now < self._retry_at and wanted.identity == self._retry_identity:
            await self._wait(self._retry_at - now)
        else:
            await self._start(wanted)

    async def _wait(self, seconds: float) -> None:
        """Sleep until something changes (want, shutdown, exit, READY=1) or ``seconds`` pass."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.01)):
                await self._kick.wait()
        self._kick.clear()

    async def _confirm_ready(self, child: _Child, now: float) -> None:
        timeout = child.ready_timeout
        deadline = math.inf if timeout is None else child.started + timeout
        if now >= deadline:
            await self._stop(child, f"it did not become ready within {timeout:.0f} s")
            self._schedule_restart(
                child.identity,
                now - child.started,
                f"did not become ready within {timeout:.0f} s",
            )
            return
        if child.notified and (
            child.ready_url is None or await self._probe(child.ready_url, child.probe_tls)
        ):
            if child.exited.is_set():
                return
            child.confirmed = child.healthy = True
            child.next_probe = time.monotonic() + self._probe_interval
            how = "" if child.ready_url is None else f" and {child.ready_url} answers"
            self._set(ChildState.READY, ready=True, message=f"{self.name} is ready{how}")
            return
        await self._wait(min(self._probe_interval, deadline - now))

    async def _watch_health(self, child: _Child, now: float) -> None:
        if not child.stable and now - child.started >= self._stable_after:
            child.stable = True
            self._backoff, self._quick_exits = self._backoff_initial, 0
            if self._status.crash_loop:
                self._set(
                    self._status.state,
                    f"{self.name} has stayed up; crash loop over",
                    ready=self._status.ready,
                )
        if child.ready_url is not None and now >= child.next_probe:
            ok = await self._probe(child.ready_url, child.probe_tls)
            # A full interval after this probe ended, not on the daemon's time grid: the
            # apiserver answers /readyz's etcd check from a result it keeps for 1 s
            # (rate.Every(etcd-readycheck-timeout/2)); probes exactly 1 s apart were given
            # the previous second's verdict half the time, and a lost datastore moved the VIP
            # to a server whose k3s was failing too (tests/lab/test_healing.py).
            child.next_probe = time.monotonic() + self._probe_interval
            if ok != child.healthy and not child.exited.is_set():
                child.healthy = ok
                if ok:
                    message = f"{self.name} answers {child.ready_url} again; ready"
                else:
                    message = f"{self.name} does not answer {child.ready_url}; not ready"
                self._set(ChildState.READY, ready=ok, message=message)
            return
        wake = child.next_probe if child.ready_url is not None else now + self._probe_interval
        if not child.stable:
            wake = min(wake, child.started + self._stable_after)
        await self._wait(wake - now)

    async def _probe(self, url: str, tls: ProbeTls | None) -> bool:
        probe = self._probes.get((url, tls))
        if probe is None:
            for old in self._probes.values():
                old.close()
            probe = HttpProbe(url, self._tls if tls is None else tls.context)
            self._probes = {(url, tls): probe}
        return await probe.status(self._probe_timeout) == 200

    async def _finish(self, stop_child: bool) -> None:
        for probe in self._probes.values():
            probe.close()
        child = self._child
        if child is None:
            return
        if child.exited.is_set():
            self._release(child)  # its pidfile must not outlive it
        elif stop_child:
            await self._stop(child, "k3snoded is shutting down")
        else:
            log.info("leaving %s (pid %d) running for the next k3snoded", self.name, child.pid)

    # ---- acting -----------------------------------------------------------------------------

    async def _start(self, spec: ChildSpec) -> None:
        env = spec.env_dict
        env["NOTIFY_SOCKET"] = str(self.notify_socket)
        out = self._output() if self._output is not None else None
        try:
            # fork+exec only: Popen returns once exec succeeded, without waiting for the child.
            # Not in a thread: a cancelled to_thread would lose the Popen and orphan the child.
            popen = subprocess.Popen(  # noqa: ASYNC220
                list(spec.argv),
                env=env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # The unit runs k3snoded with UMask=0077 for its own secrets; k3s (kubelet,
                # containerd, hostPath volumes) expects the 0022 its own unit gives it.
                umask=0o022,
                stdout=out,
                stderr=out,
            )
        except OSError as exc:
            self._last_exit = None
            self._schedule_restart(spec.identity, 0.0, f"could not be started ({exc})")
            return
        finally:
            if out is not None:
                os.close(out)
        child = _Child(
            pid=popen.pid,
            pidfd=os.pidfd_open(popen.pid),
            identity=spec.identity,
            ready_url=spec.ready_url,
            ready_timeout=spec.ready_timeout,
            stop_timeout=spec.stop_timeout,
            adopted=False,
            started=time.monotonic(),
            popen=popen,
            probe_tls=spec.probe_tls,
        )
        self._track(child)
        self._set(ChildState.STARTING, f"started {self.name} (pid {child.pid})")
        record = PidRecord(
            child.pid,
            process_starttime(child.pid) or 0,
            spec.identity,
            spec.ready_url,
            spec.ready_timeout,
            spec.stop_timeout,
            boot_id(),
            spec.probe_tls,
        )
        try:
            await asyncio.to_thread(write_pidfile, self.pidfile, record)
        except OSError as exc:
            log.error("cannot write %s (%s): a new k3snoded could not adopt it", self.pidfile, exc)

    async def _adopt(self) -> None:
        record = await asyncio.to_thread(read_pidfile, self.pidfile)
        if record is None:
            return
        this_boot = await asyncio.to_thread(boot_id)
        if record.boot_id and record.boot_id != this_boot:
            log.info(
                "%s was written before the machine restarted (boot %s, now %s); not adopting "
                "pid %d",
                self.pidfile,
                record.boot_id,
                this_boot,
                record.pid,
            )
            remove_pidfile(self.pidfile)
            return
        pidfd: int | None = None
        if process_starttime(record.pid) == record.starttime:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(record.pid)
        # Checked again once the pidfd pins the pid: it cannot be reused from here on.
        if pidfd is None or process_starttime(record.pid) != record.starttime:
            if pidfd is not None:
                os.close(pidfd)
            log.info(
                "%s names pid %d, which is gone or now another process; not adopting it",
                self.pidfile,
                record.pid,
            )
            remove_pidfile(self.pidfile)
            return
        child = _Child(
            pid=record.pid,
            pidfd=pidfd,
            identity=record.identity,
            ready_url=record.ready_url,
            ready_timeout=record.ready_timeout,
            stop_timeout=record.stop_timeout,
            adopted=True,
            started=time.monotonic(),
            notified=True,  # it was running under the previous daemon; READY=1 is not resent
            probe_tls=record.probe_tls,
        )
        self._track(child)
        self._set(
            ChildState.STARTING,
            f"adopted {self.name} (pid {child.pid}) left running by a previous k3snoded",
        )

    async def _stop(self, child: _Child, why: str) -> None:
        """SIGTERM the child alone; after stop_timeout SIGKILL its whole process group."""
        self._set(ChildState.STOPPING, f"stopping {self.name} (pid {child.pid}): {why}")
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(child.pidfd, signal.SIGTERM)
        if not await self._wait_exit(child, child.stop_timeout):
            log.warning(
                "%s (pid %d) did not stop within %.1f s of SIGTERM; killing its process group",
                self.name,
                child.pid,
                child.stop_timeout,
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            if not await self._wait_exit(child, 10.0):
                raise SupervisorError(f"{self.name} (pid {child.pid}) survived SIGKILL")
        self._release(child)
        self._last_exit = child.status
        self._set(ChildState.STOPPED, f"{self.name} stopped ({describe_exit(child.status)})")

    def _child_exited(self, child: _Child) -> None:
        self._release(child)
        self._last_exit = child.status
        self._schedule_restart(
            child.identity, time.monotonic() - child.started, describe_exit(child.status)
        )

    def _schedule_restart(self, identity: str, uptime: float, what: str) -> None:
        if uptime >= self._stable_after:
            self._backoff, self._quick_exits = self._backoff_initial, 0
        else:
            self._quick_exits += 1
        wanted = self._wanted
        if isinstance(wanted, _Unset) or wanted is None or wanted.identity != identity:
            self._set(ChildState.STOPPED, f"{self.name} {what}", level=logging.WARNING)
            return
        delay = self._backoff
        self._backoff = min(delay * 2, self._backoff_max)
        self._restarts += 1
        self._retry_at = time.monotonic() + delay
        self._retry_identity = identity
        message = f"{self.name} {what}; restarting in {delay:.1f} s (restart {self._restarts})"
        if self._quick_exits >= self._crash_loop_exits:
            message += f"; crash loop: {self._quick_exits} quick exits in a row"
        self._set(ChildState.BACKOFF, message, level=logging.WARNING)

    # ---- bookkeeping ------------------------------------------------------------------------

    async def _wait_exit(self, child: _Child, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await child.exited.wait()
        except TimeoutError:
            return False
        return True

    def _track(self, child: _Child) -> None:
        self._child = child
        asyncio.get_running_loop().add_reader(child.pidfd, self._on_pidfd, child)

    def _on_pidfd(self, child: _Child) -> None:
        """The pidfd turned readable: the child has exited. Reap it if it is ours."""
        asyncio.get_running_loop().remove_reader(child.pidfd)
        if child.popen is not None:
            code = child.popen.poll()
            if code is not None:
                child.status = 128 - code if code < 0 else code
        child.exited.set()
        self._kick.set()

    def _release(self, child: _Child) -> None:
        """Forget a child that has exited on purpose or not: its pidfile goes too."""
        self._forget_child()
        remove_pidfile(self.pidfile)

    def _forget_child(self) -> None:
        """Stop watching the child, leaving it (and its pidfile) alone."""
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(ValueError, RuntimeError):
            asyncio.get_running_loop().remove_reader(child.pidfd)
        os.close(child.pidfd)

    def _on_notify(self, message: NotifyMessage) -> None:
        child = self._child
        if child is None or child.notified:
            return
        sender = message.pid
        if sender is not None and sender != child.pid and session_of(sender) != child.pid:
            log.debug("ignoring sd_notify from pid %d: not %s's", sender, self.name)
            return
        if message.fields.get("READY") == "1":
            child.notified = True
            log.info("%s (pid %d) sent READY=1", self.name, child.pid)
            self._kick.set()

    def _set(
        self, state: ChildState, message: str, *, ready: bool = False, level: int = logging.INFO
    ) -> None:
        child = self._child
        self._status = ChildStatus(
            state=state,
            pid=None if child is None else child.pid,
            ready=ready,
            restarts=self._restarts,
            last_exit=self._last_exit,
            crash_loop=self._quick_exits >= self._crash_loop_exits,
            since=time.time(),
            adopted=False if child is None else child.adopted,
            message=message,
        )
        log.log(level, "%s", message)
        for cb in list(self._callbacks):
            try:
                cb(self._status)
            except Exception:
                log.exception("status callback %r failed", cb)
