"""One machine's part of a rolling k3s upgrade: the steps, done by its own daemon once the
coordinator grants it (``rollout.py``), each recorded in its ``ops/upgrade/<node>`` flag so a
restarted daemon resumes where it was.

Steps (``Progress.step``):

1. ``vip``: the VIP is held away from this machine; if it holds it, it hands it to another
   ready server first (``switchover.py``: no second holder, a gap of about a millisecond);
2. ``draining``: cordon and drain through the Kubernetes API (``upgrade.drain_timeout``);
3. ``downloading``: the new release is downloaded and verified beside the running binary
   while the old k3s still serves (``binaries.py``);
4. ``restarting``: the staged binary is swapped in (the previous one kept), k3s is stopped and
   started on it: the one k3s restart of the upgrade;
5. ``starting``: ready within ``k3s.ready_timeout``, then ready for ``upgrade.stable_for``
   without exiting (a readiness blip restarts the stable clock; an exit fails). An agent is
   not judged on a readiness it cannot have: held by the version-skew rule, its wait starts
   again once it may run; with no server ready, running without an exit is the test;
6. ``uncordoning``: uncordoned, the VIP free to come back; then ``done``.

A failure in 1-3 (the release cannot be downloaded or verified) changes nothing on the machine:
it is uncordoned, the error is shown in its progress, and it tries again after a backoff
(30 s doubling to 10 min) while the grant lasts. A failure in 5 is rolled back: the previous
binary is put back and k3s restarted on it (``rolling-back``), then ``failed`` with the
reason; the coordinator halts the rollout.
Before step 4 a revoked grant (the target changed, the fleet paused) cancels the upgrade; from
step 4 on it is finished whatever happens, since k3s is already down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from k3snoded.config import Config
from k3snoded.errors import InstallError
from k3snoded.opsstate import EARLY, RUNNING, STEP_DONE, STEP_FAILED, OpsView, Progress
from k3snoded.process import ChildStatus
from k3snoded.versions import older

log = logging.getLogger("k3snoded.upgrade")

POLL = 0.25  # seconds between looks at the local k3s while waiting
RECORD_RETRY = 2.0  # seconds between tries to record a step the upgrade waits on
RETRY_FIRST = 30.0  # seconds before a failed download is tried again; doubles to RETRY_MAX
RETRY_MAX = 600.0
VIP_KEY = "upgrade"


class Binary(Protocol):
    async def version(self) -> str: ...

    async def stage(self, version: str) -> None: ...

    async def staged(self) -> str: ...

    async def swap(self) -> None: ...

    async def restore(self) -> bool: ...


class Kube(Protocol):
    async def run(self, op: str, node: str, limit: float = 0.0, *, forward: bool = True) -> str: ...


async def uncordon(kube: Kube, node: str, *, attempts: int, pause: float) -> str:
    """Uncordon ``node``, trying ``attempts`` times ``pause`` s apart (the apiserver may be
    coming back); what was done, or the last error's text prefixed with "cannot"."""
    for attempt in range(attempts):
        try:
            return await kube.run("uncordon", node)
        except Exception as exc:
            if attempt == attempts - 1:
                return f"cannot uncordon {node}: {exc}"
            await asyncio.sleep(pause)
    return f"cannot uncordon {node}"


class K3sControl(Protocol):
    """What the upgrader needs of the fleet loop (``operations.Operations`` provides it)."""

    @property
    def child(self) -> ChildStatus: ...

    async def hold_down(self, why: str) -> None: ...

    async def resume(self) -> None: ...

    async def vip_away(self) -> str: ...

    def vip_back(self) -> None: ...

    def skew_blocks(self, version: str) -> str: ...

    def no_server_ready(self) -> bool: ...


class Failed(Exception):
    """The upgrade did not work; the message says why."""


class Upgrader:
    def __init__(
        self,
        me: str,
        *,
        cfg: Callable[[], Config],
        binary: Binary,
        kube: Kube,
        ctl: K3sControl,
        write: Callable[[Progress], Awaitable[bool]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.me = me
        self._cfg = cfg
        self.binary = binary
        self.kube = kube
        self.ctl = ctl
        self._write = write
        self._clock = clock
        self.task: asyncio.Task[None] | None = None
        self.progress: Progress | None = None
        self._target = ""
        self.version = ""  # the release of the binary at k3s.binary (heartbeat)

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def early(self) -> bool:
        """Nothing changed on the machine yet (it may still be cancelled)."""
        return self.progress is None or self.progress.step in EARLY

    def cancel(self) -> None:
        if self.busy and self.early:
            assert self.task is not None
            self.task.cancel()

    def tick(self, view: OpsView) -> None:
        """Start, resume or cancel this machine's upgrade from what the flags say."""
        r = view.rollout
        granted = r is not None and r.state == RUNNING and self.me in r.grants
        mine = view.progress.get(self.me)
        if self.progress is None and mine is not None:
            self.progress = mine  # a restarted daemon: where the previous one was
        p = self.progress
        if self.busy:
            step = p.step if p is not None else ""
            if (not granted or r is None or r.target != self._target) and step in EARLY:
                log.info("upgrade to %s cancelled: the rollout no longer grants it", self._target)
                assert self.task is not None
                self.task.cancel()
            return
        unfinished = (
            p is not None and p.step not in (STEP_DONE, STEP_FAILED, *EARLY) and p.target != ""
        )
        if unfinished:
            assert p is not None
            self._start(p.target, p)  # k3s was already down for it: finish, granted or not
        elif granted and r is not None and older(self.version, r.target):
            if p is not None and p.target == r.target and p.step in (STEP_DONE, STEP_FAILED):
                return  # tried already: failed (the rollout halts), or done but the binary
                # says otherwise (the status shows it); never again for this target
            resume = p if p is not None and p.target == r.target and p.step in EARLY else None
            self._start(r.target, resume)

    def _start(self, target: str, resume: Progress | None) -> None:
        self._target = target
        self.task = asyncio.create_task(self._run(target, resume), name="upgrade")

    async def stop(self) -> None:
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- the steps -----------------------------------------------------------------------
    async def _step(self, target: str, old: str, step: str, error: str = "") -> None:
        """Record a step; if the datastore does not take it now, at a later cycle."""
        self.progress = Progress(self.me, target, old, step, self._clock(), error)
        await self._write(self.progress)

    async def _step_recorded(self, target: str, old: str, step: str) -> None:
        """Record a step before going on, waiting while the datastore does not answer: k3s is
        restarted for an upgrade only then, because a server cannot start without its
        datastore, and a restart during an outage would fail the release (and halt the
        rollout) for the outage's sake."""
        while True:
            self.progress = Progress(self.me, target, old, step, self._clock())
            if await self._write(self.progress):
                return
            await asyncio.sleep(RECORD_RETRY)

    async def _run(self, target: str, resume: Progress | None) -> None:
        old = resume.from_version if resume is not None and resume.from_version else self.version
        step = resume.step if resume is not None else ""
        cfg = self._cfg()
        try:
            if step in EARLY:
                log.info("upgrading k3s from %s to %s", old or "an unknown release", target)
                await self._prepare_retrying(target, old, cfg)
                await self._wait_for_the_servers(target)
                step = "restarting"
            if step == "restarting":
                await self._step_recorded(target, old, "restarting")
                if await self.binary.version() != target:
                    if await self.binary.staged() != target:
                        await self.binary.stage(target)
                    await self.binary.swap()
                self.version = await self.binary.version()
                try:
                    await self._restart(
                        f"upgrading k3s to {target}: restarting it on the new binary"
                    )
                except Failed as exc:  # the old k3s still runs: put its binary back
                    await self.binary.restore()
                    self.version = await self.binary.version()
                    await self._uncordon(cfg)
                    self.ctl.vip_back()
                    await self._step(target, old, STEP_FAILED, str(exc))
                    log.error("upgrade to %s failed: %s", target, exc)
                    return
                step = "starting"
            if step in ("starting", "rolling-back"):
                if step == "starting":
                    await self._step(target, old, "starting")
                    try:
                        await self._ready_and_stable(cfg)
                    except Failed as exc:
                        await self._roll_back(target, old, str(exc))
                        return
                else:
                    await self._roll_back(target, old, resume.error if resume else "")
                    return
                step = "uncordoning"
            await self._step(target, old, "uncordoning")
            await self._uncordon(cfg)
            self.ctl.vip_back()
            await self._step(target, old, STEP_DONE)
            log.info("k3s upgraded from %s to %s", old or "an unknown release", target)
        except asyncio.CancelledError:
            if self.progress is None or self.progress.step in EARLY:
                await asyncio.shield(self._undo_early(cfg))
            raise
        finally:
            await asyncio.shield(self.ctl.resume())

    async def _prepare_retrying(self, target: str, old: str, cfg: Config) -> None:
        """Steps 1-3; a failure there (the release cannot be downloaded or verified) changed
        nothing on the machine and is retried with a backoff, the error in the progress."""
        delay = RETRY_FIRST
        while True:
            try:
                await self._prepare(target, old, cfg)
                return
            except Failed as exc:
                await self._undo_early(cfg)
                await self._step(target, old, "downloading", str(exc))
                log.error("upgrade to %s: %s; nothing changed; trying again in %.0f s",
                          target, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _prepare(self, target: str, old: str, cfg: Config) -> None:
        await self._step(target, old, "vip")
        sentence = await self.ctl.vip_away()
        log.info("upgrade: %s", sentence)
        if cfg.upgrade.drain:
            await self._step(target, old, "draining")
            try:
                log.info("%s", await self.kube.run("drain", self.me, cfg.upgrade.drain_timeout))
            except Exception as exc:  # KubeError, OpsError: the drain is a courtesy
                log.warning("upgrade: cannot drain %s (%s); going on", self.me, exc)
        await self._step(target, old, "downloading")
        try:
            await self.binary.stage(target)
        except InstallError as exc:
            raise Failed(f"cannot install k3s {target}: {exc}") from exc

    async def _wait_for_the_servers(self, target: str) -> None:
        """An agent does not restart on ``target`` while a server runs an older release (a
        server granted its upgrade and demoted since, in the same coordinator cycle): it
        waits, still on its old k3s, until the servers catch up or the coordinator takes the
        grant back (``tick`` cancels it: nothing changed on the machine yet)."""
        said = ""
        while why := self.ctl.skew_blocks(target):
            if why != said:
                log.info("upgrade to %s waits: %s", target, why)
                said = why
            await asyncio.sleep(POLL)

    async def _restart(self, why: str) -> None:
        """Stop k3s (the old process must be gone), then start it again, on whatever
        k3s.binary is now; Failed when it did not stop."""
        cfg = self._cfg()
        await self.ctl.hold_down(why)
        deadline = Deadline(cfg.k3s.stop_timeout + 20.0)
        while self.ctl.child.pid is not None and not deadline.passed():  # noqa: ASYNC110
            await asyncio.sleep(POLL)  # (the supervisor's status is polled, like the probes)
        stopped = self.ctl.child.pid is None
        await self.ctl.resume()
        if not stopped:
            raise Failed(f"k3s did not stop within {cfg.k3s.stop_timeout + 20.0:g} s")

    async def _ready_and_stable(self, cfg: Config) -> None:
        """Ready within k3s.ready_timeout, then ready for upgrade.stable_for without an exit.

        Two states of an agent say nothing about its release: held stopped by the version-skew
        rule (a server demoted mid-upgrade came back as an agent newer than a server; the
        rollout upgrades that server), where the wait starts again once it may run; and no
        server ready (an agent cannot be ready without one), where running for stable_for
        without an exit is all that can be asked of it."""
        deadline = Deadline(cfg.k3s.ready_timeout + cfg.upgrade.stable_for)
        restarts = self.ctl.child.restarts
        stable_since: float | None = None
        said = ""
        while True:
            child = self.ctl.child
            now = _now()
            if child.restarts != restarts:
                raise Failed(f"k3s {self.version} exited ({child.message})")
            held = self.ctl.skew_blocks(self.version)
            if held:
                deadline.restart()
                if held != said:
                    log.info("upgrade: k3s %s waits to be judged: %s", self.version, held)
                    said = held
            alone = not held and child.pid is not None and self.ctl.no_server_ready()
            if child.ready or alone:
                stable_since = now if stable_since is None else stable_since
                if now - stable_since >= cfg.upgrade.stable_for:
                    if not child.ready:
                        log.info("upgrade: k3s %s runs without exiting; no server is ready "
                                 "to judge it further", self.version)  # fmt: skip
                    return
            else:
                stable_since = None
            if deadline.passed():
                raise Failed(
                    f"k3s {self.version} was not ready and stable for "
                    f"{cfg.upgrade.stable_for:g} s within {cfg.k3s.ready_timeout:g} s"
                )
            await asyncio.sleep(POLL)

    async def _roll_back(self, target: str, old: str, why: str) -> None:
        log.error("upgrade to %s failed: %s; rolling back to %s", target, why, old)
        await self._step(target, old, "rolling-back", why)
        cfg = self._cfg()
        if await self.binary.restore():
            self.version = await self.binary.version()
            try:
                await self._restart(f"rolling k3s back to {old}")
                await self._ready_and_stable(cfg)
                outcome = f"{why}; rolled back to {old}"
            except Failed as exc:
                outcome = f"{why}; rolled back to {old}, which does not come up either: {exc}"
        else:
            outcome = f"{why}; no previous binary to roll back to"
        await self._uncordon(cfg)
        self.ctl.vip_back()
        await self._step(target, old, STEP_FAILED, outcome)
        log.error("upgrade to %s failed: %s", target, outcome)

    async def _uncordon(self, cfg: Config) -> None:
        if not cfg.upgrade.drain:
            return
        said = await uncordon(self.kube, self.me, attempts=5, pause=2.0)
        log.log(logging.WARNING if said.startswith("cannot") else logging.INFO, "upgrade: %s", said)

    async def _undo_early(self, cfg: Config) -> None:
        """Before the restart nothing changed but the cordon and the VIP's hold: undo them."""
        with contextlib.suppress(Exception):
            await self._uncordon(cfg)
        self.ctl.vip_back()


def _now() -> float:
    """The event loop's clock (the simulator's virtual time under tests/sim)."""
    return asyncio.get_running_loop().time()


GAP = 5.0  # seconds between two looks beyond which this daemon did not run (SIGSTOP)


class Deadline:
    """A deadline on the event loop's clock that does not count the time this daemon did not
    run. CLOCK_MONOTONIC goes on while a whole machine is stopped (SIGSTOP, a paused VM): a
    gap between two looks far longer than the poll is time nobody watched, and k3s (stopped
    along with it) did not get it either; thawed, a wait goes on for what it had left rather
    than judging k3s on time it never had."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._last = _now()
        self._at = self._last + seconds

    def restart(self) -> None:
        self._last = _now()
        self._at = self._last + self._seconds

    def passed(self) -> bool:
        now = _now()
        if now - self._last > GAP:
            self._at += now - self._last
        self._last = now
        return now >= self._at
