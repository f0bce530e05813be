"""The supervisor against a real child process: readiness, backoff, crash loop, stop, kill."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from k3snoded.model import ChildState
from k3snoded.notify import SystemdNotifier
from k3snoded.process import read_pidfile
from k3snoded.supervisor import ChildStatus, Supervisor
from tests.integration.children.kit import (
    Tracker,
    child_spec,
    free_port,
    gone,
    processes_tagged,
    wait_status,
    wait_until,
)


@asynccontextmanager
async def running(supervisor: Supervisor, tracker: Tracker) -> AsyncIterator[Supervisor]:
    tracker.watch(supervisor)
    task = asyncio.create_task(supervisor.run())
    try:
        yield supervisor
    finally:
        await asyncio.wait_for(supervisor.shutdown(), 30)
        await task


def _delay(message: str) -> float:
    match = re.search(r"restarting in ([\d.]+) s", message)
    assert match is not None, message
    return float(match[1])


def _history(supervisor: Supervisor) -> list[ChildStatus]:
    seen: list[ChildStatus] = []
    supervisor.on_change(seen.append)
    return seen


async def test_ready_needs_ready1_then_ping(run_dir: Path, tracker: Tracker) -> None:
    port = free_port()
    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    sup.want(child_spec(run_dir, "--ready-delay", "1.0", port=port))
    async with running(sup, tracker):
        started = await wait_status(sup, lambda s: s.state is ChildState.STARTING)
        assert started.pid is not None and not started.ready
        # READY=1 from a process outside the child's session does not count.
        stranger = SystemdNotifier(str(sup.notify_socket))
        assert stranger.ready()
        stranger.close()
        await asyncio.sleep(0.6)  # /ping already answers, but the child's READY=1 is not sent yet
        assert sup.status.state is ChildState.STARTING
        ready = await wait_status(sup, lambda s: s.ready)
        assert ready.state is ChildState.READY
        assert ready.pid == started.pid and not ready.adopted
        record = read_pidfile(run_dir / "child.pid")
        assert record is not None and record.pid == started.pid
        assert (run_dir / "child.pid").stat().st_mode & 0o077 == 0


async def test_readiness_follows_ping_without_killing(run_dir: Path, tracker: Tracker) -> None:
    port = free_port()
    failing = run_dir / "ping-fails"
    failing.touch()
    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    sup.want(child_spec(run_dir, "--ping-fail-file", str(failing), port=port))
    async with running(sup, tracker):
        await wait_status(sup, lambda s: s.state is ChildState.STARTING)
        await asyncio.sleep(0.8)  # READY=1 sent, but /ping says 503: not ready
        assert sup.status.state is ChildState.STARTING and not sup.status.ready
        failing.unlink()
        ready = await wait_status(sup, lambda s: s.ready)
        failing.touch()
        unhealthy = await wait_status(sup, lambda s: not s.ready)
        assert unhealthy.pid == ready.pid and unhealthy.restarts == 0
        assert "does not answer" in unhealthy.message
        failing.unlink()
        again = await wait_status(sup, lambda s: s.ready)
        assert again.pid == ready.pid


async def test_restart_with_growing_backoff_and_crash_loop(run_dir: Path, tracker: Tracker) -> None:
    sup = Supervisor(
        "child", run_dir, backoff_initial=0.2, backoff_max=0.8, ready_probe_interval=0.05
    )
    seen = _history(sup)
    sup.want(child_spec(run_dir, "--exit-after", "0.3", "--exit-code", "3"))
    async with running(sup, tracker):
        await wait_status(sup, lambda s: s.restarts >= 4, timeout=30)
    backoffs = [s for s in seen if s.state is ChildState.BACKOFF]
    delays = [_delay(s.message) for s in backoffs[:4]]
    assert delays == [0.2, 0.4, 0.8, 0.8]
    assert [s.restarts for s in backoffs[:4]] == [1, 2, 3, 4]
    assert all(s.last_exit == 3 for s in backoffs)
    assert "exited with status 3; restarting in 0.2 s (restart 1)" in backoffs[0].message
    assert [s.crash_loop for s in backoffs[:4]] == [False, False, True, True]
    # The restarts really waited: each new start comes at least `delay` after the exit.
    starts = [s for s in seen if s.state is ChildState.STARTING]
    for backoff, delay in zip(backoffs[:3], delays[:3], strict=True):
        next_start = next(s for s in starts if s.since > backoff.since)
        assert next_start.since - backoff.since >= delay - 0.02
    assert len({s.pid for s in starts}) == len(starts)  # a new process each time


async def test_backoff_resets_after_the_child_stayed_up(run_dir: Path, tracker: Tracker) -> None:
    sup = Supervisor(
        "child",
        run_dir,
        backoff_initial=0.1,
        backoff_max=5.0,
        stable_after=0.4,
        ready_probe_interval=0.05,
    )
    seen = _history(sup)
    sup.want(child_spec(run_dir, "--exit-after", "0.8"))
    async with running(sup, tracker):
        await wait_status(sup, lambda s: s.restarts >= 3, timeout=30)
    backoffs = [s for s in seen if s.state is ChildState.BACKOFF]
    assert all("restarting in 0.1 s" in s.message for s in backoffs)
    assert not any(s.crash_loop for s in seen)


async def test_clean_stop_leaves_descendants(run_dir: Path, tracker: Tracker) -> None:
    grandchild_file = run_dir / "grandchild"
    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    sup.want(child_spec(run_dir, "--grandchild-pidfile", str(grandchild_file)))
    tracker.watch(sup)
    task = asyncio.create_task(sup.run())
    ready = await wait_status(sup, lambda s: s.ready)
    assert ready.pid is not None
    grandchild = int(grandchild_file.read_text())
    tracker.add(grandchild)
    await asyncio.wait_for(sup.shutdown(), 10)
    await task
    assert sup.status.state is ChildState.STOPPED
    assert sup.status.last_exit == 0 and sup.status.pid is None
    assert gone(ready.pid)
    assert not (run_dir / "child.pid").exists()
    assert not (run_dir / "child.notify").exists()
    assert not gone(grandchild)  # SIGTERM went to the child alone (KillMode=process)


async def test_sigkill_escalation_kills_the_group(run_dir: Path, tracker: Tracker) -> None:
    grandchild_file = run_dir / "grandchild"
    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    sup.want(
        child_spec(
            run_dir, "--ignore-term", "--grandchild-pidfile", str(grandchild_file), stop_timeout=0.5
        )
    )
    tracker.watch(sup)
    task = asyncio.create_task(sup.run())
    ready = await wait_status(sup, lambda s: s.ready)
    assert ready.pid is not None
    grandchild = int(grandchild_file.read_text())
    tracker.add(grandchild)
    t0 = time.monotonic()
    await asyncio.wait_for(sup.shutdown(), 10)
    await task
    assert time.monotonic() - t0 >= 0.5
    assert sup.status.last_exit == 137  # 128 + SIGKILL
    assert gone(ready.pid)
    await wait_until("the grandchild to die with the group", lambda: gone(grandchild), 5)
    assert not (run_dir / "child.pid").exists()


async def test_want_switches_and_stops(run_dir: Path, tracker: Tracker) -> None:
    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    sup.want(child_spec(run_dir, "--ready-delay", "0.05"))
    async with running(sup, tracker):
        first = await wait_status(sup, lambda s: s.ready)
        sup.want(child_spec(run_dir, "--ready-delay", "0.06"))
        second = await wait_status(sup, lambda s: s.ready and s.pid != first.pid)
        assert first.pid is not None and gone(first.pid)
        assert second.restarts == 0 and second.last_exit == 0
        assert processes_tagged(run_dir) == [second.pid]
        sup.want(None)
        stopped = await wait_status(sup, lambda s: s.state is ChildState.STOPPED)
        assert stopped.pid is None and not (run_dir / "child.pid").exists()
        assert processes_tagged(run_dir) == []
        await asyncio.sleep(0.3)  # nothing is started while nothing is wanted
        assert processes_tagged(run_dir) == []


async def test_not_ready_in_time_is_a_failed_start(run_dir: Path, tracker: Tracker) -> None:
    sup = Supervisor("child", run_dir, backoff_initial=0.1, ready_probe_interval=0.05)
    sup.want(child_spec(run_dir, "--no-ready", ready_timeout=0.5))
    async with running(sup, tracker):
        status = await wait_status(sup, lambda s: s.restarts >= 1)
        assert "did not become ready within" in status.message
        assert status.last_exit == 0  # stopped by SIGTERM, on purpose


async def test_missing_binary_backs_off(run_dir: Path, tracker: Tracker) -> None:
    sup = Supervisor("child", run_dir, backoff_initial=0.05, ready_probe_interval=0.05)
    spec = child_spec(run_dir)
    sup.want(type(spec).build([str(run_dir / "no-such-binary")], {}))
    async with running(sup, tracker):
        status = await wait_status(sup, lambda s: s.crash_loop)
    assert "could not be started" in status.message
    assert status.restarts >= 3


async def test_cancelled_run_leaves_the_child_running(run_dir: Path, tracker: Tracker) -> None:
    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    sup.want(child_spec(run_dir))
    tracker.watch(sup)
    task = asyncio.create_task(sup.run())
    ready = await wait_status(sup, lambda s: s.ready)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ready.pid is not None and not gone(ready.pid)
    record = read_pidfile(run_dir / "child.pid")
    assert record is not None and record.pid == ready.pid
