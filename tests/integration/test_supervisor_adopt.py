"""Adoption: a child left running by a SIGKILLed daemon is adopted, never started twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from k3snoded.model import ChildState
from k3snoded.process import PidRecord, process_starttime, read_pidfile, write_pidfile
from k3snoded.supervisor import ChildSpec, Supervisor
from tests.integration.children.kit import (
    Tracker,
    child_spec,
    daemon_then_sigkill,
    free_port,
    gone,
    processes_tagged,
    wait_status,
    wait_until,
)


def _spec(run_dir: Path, port: int, *extra: str) -> ChildSpec:
    return child_spec(run_dir, *extra, port=port, stop_timeout=5.0)


async def test_adopts_the_child_of_a_killed_daemon(run_dir: Path, tracker: Tracker) -> None:
    port = free_port()
    spec = _spec(run_dir, port)
    child_pid = await daemon_then_sigkill(run_dir, spec, tracker)
    assert processes_tagged(run_dir) == [child_pid]

    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    tracker.watch(sup)
    messages: list[str] = []
    sup.on_change(lambda s: messages.append(s.message))
    sup.want(spec)
    task = asyncio.create_task(sup.run())
    status = await wait_status(sup, lambda s: s.ready)
    assert status.adopted and status.pid == child_pid and status.restarts == 0
    assert messages[0] == f"adopted child (pid {child_pid}) left running by a previous k3snoded"
    await asyncio.sleep(0.5)
    assert processes_tagged(run_dir) == [child_pid]  # one child, never a second one

    await asyncio.wait_for(sup.shutdown(), 15)
    await task
    await wait_until("the adopted child to exit", lambda: gone(child_pid), 5)
    assert sup.status.state is ChildState.STOPPED
    assert not (run_dir / "child.pid").exists()
    assert processes_tagged(run_dir) == []


async def test_adopted_child_with_another_spec_is_replaced(run_dir: Path, tracker: Tracker) -> None:
    port = free_port()
    old = _spec(run_dir, port)
    child_pid = await daemon_then_sigkill(run_dir, old, tracker)

    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    tracker.watch(sup)
    new = _spec(run_dir, port, "--ready-delay", "0.2")
    sup.want(new)
    task = asyncio.create_task(sup.run())
    try:
        status = await wait_status(sup, lambda s: s.ready and s.pid != child_pid)
        assert not status.adopted
        assert gone(child_pid)
        assert processes_tagged(run_dir) == [status.pid]
        record = read_pidfile(run_dir / "child.pid")
        assert record is not None and record.identity == new.identity
    finally:
        await asyncio.wait_for(sup.shutdown(), 15)
        await task


async def test_adopted_child_exit_is_seen_and_restarted(run_dir: Path, tracker: Tracker) -> None:
    port = free_port()
    spec = _spec(run_dir, port)
    child_pid = await daemon_then_sigkill(run_dir, spec, tracker)

    sup = Supervisor("child", run_dir, backoff_initial=0.1, ready_probe_interval=0.05)
    tracker.watch(sup)
    sup.want(spec)
    task = asyncio.create_task(sup.run())
    try:
        await wait_status(sup, lambda s: s.adopted and s.ready)
        os.kill(child_pid, signal.SIGKILL)  # not our child: only its pidfd tells us
        backoff = await wait_status(sup, lambda s: s.restarts == 1)
        assert backoff.last_exit is None  # the status of a process we did not start is unknown
        status = await wait_status(sup, lambda s: s.ready and s.pid != child_pid)
        assert not status.adopted
        assert processes_tagged(run_dir) == [status.pid]
    finally:
        await asyncio.wait_for(sup.shutdown(), 15)
        await task


async def test_without_want_the_adopted_child_is_kept(run_dir: Path, tracker: Tracker) -> None:
    port = free_port()
    child_pid = await daemon_then_sigkill(run_dir, _spec(run_dir, port), tracker)
    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    tracker.watch(sup)
    task = asyncio.create_task(sup.run())  # no want() yet: adopt, but neither stop nor start
    await wait_status(sup, lambda s: s.adopted and s.ready)
    await asyncio.wait_for(sup.shutdown(stop_child=False), 15)
    await task
    assert not gone(child_pid)
    record = read_pidfile(run_dir / "child.pid")
    assert record is not None and record.pid == child_pid  # kept for the next daemon


async def test_a_reused_pid_is_not_adopted(run_dir: Path, tracker: Tracker) -> None:
    port = free_port()
    spec = _spec(run_dir, port)
    # A live process that is not our child: same pid as in the pidfile, other start time.
    stranger = subprocess.Popen(["sleep", "60"])
    tracker.add(stranger.pid)
    starttime = process_starttime(stranger.pid)
    assert starttime is not None
    write_pidfile(
        run_dir / "child.pid", PidRecord(stranger.pid, starttime - 1, spec.identity, None)
    )
    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    tracker.watch(sup)
    sup.want(spec)
    task = asyncio.create_task(sup.run())
    try:
        status = await wait_status(sup, lambda s: s.ready)
        assert status.pid != stranger.pid and not status.adopted
        assert stranger.poll() is None  # left alone, not signalled
        record = read_pidfile(run_dir / "child.pid")
        assert record is not None and record.pid == status.pid
    finally:
        await asyncio.wait_for(sup.shutdown(), 15)
        await task
        stranger.kill()
        stranger.wait()


async def test_a_dead_pid_is_not_adopted(run_dir: Path, tracker: Tracker) -> None:
    spec = _spec(run_dir, free_port())
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_pidfile(run_dir / "child.pid", PidRecord(dead.pid, 12345, spec.identity, None))
    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    tracker.watch(sup)
    sup.want(spec)
    task = asyncio.create_task(sup.run())
    try:
        status = await wait_status(sup, lambda s: s.ready)
        assert not status.adopted and status.pid != dead.pid
    finally:
        await asyncio.wait_for(sup.shutdown(), 15)
        await task


async def test_a_pidfile_from_another_boot_is_not_trusted(run_dir: Path, tracker: Tracker) -> None:
    """After a reboot a pid and its start time (ticks since boot) can name a new process: the
    pidfile records the boot id and a record from another boot is never adopted."""
    import json

    port = free_port()
    spec = _spec(run_dir, port)
    child_pid = await daemon_then_sigkill(run_dir, spec, tracker)
    pidfile = run_dir / "child.pid"
    data = json.loads(pidfile.read_text())
    data["boot_id"] = "0" * 32  # as if written before the machine restarted
    pidfile.write_text(json.dumps(data))

    sup = Supervisor("child", run_dir, ready_probe_interval=0.05)
    tracker.watch(sup)
    messages: list[str] = []
    sup.on_change(lambda s: messages.append(s.message))
    # (Another port: the old child, which after a real reboot would not exist, keeps its.)
    sup.want(_spec(run_dir, free_port()))
    task = asyncio.create_task(sup.run())
    try:
        status = await wait_status(sup, lambda s: s.ready, timeout=20)
        assert not status.adopted and status.pid != child_pid
        assert not any(m.startswith("adopted") for m in messages)
    finally:
        await asyncio.wait_for(sup.shutdown(), 15)
        await task
