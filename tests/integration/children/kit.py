"""Shared pieces of the supervisor tests (not a child): the test child, ports, processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from k3snoded.process import process_starttime
from k3snoded.supervisor import ChildSpec, ChildStatus, Supervisor

CHILDREN = Path(__file__).parent
NOTIFY_CHILD = CHILDREN / "notify_child.py"
RUN_SUPERVISOR = CHILDREN / "run_supervisor.py"
REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env["PYTHONPATH"] = str(REPO)
    return env


def child_spec(
    tag: Path,
    *args: str,
    port: int | None = None,
    ready_timeout: float = 20.0,
    stop_timeout: float = 5.0,
) -> ChildSpec:
    """The test child; ``tag`` (the test's run dir) makes its processes findable in /proc."""
    argv = [sys.executable, str(NOTIFY_CHILD), "--tag", str(tag), *args]
    if port is not None:
        argv += ["--port", str(port)]
    return ChildSpec.build(
        argv,
        child_env(),
        ready_url=None if port is None else f"https://127.0.0.1:{port}/ping",
        ready_timeout=ready_timeout,
        stop_timeout=stop_timeout,
    )


def processes_tagged(tag: Path) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``tag``."""
    found = []
    needle = str(tag).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and process_starttime(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


class Tracker:
    """Every process a test started, by pid and start time, ended at teardown if still there."""

    def __init__(self) -> None:
        self.procs: dict[int, int] = {}

    def add(self, pid: int | None) -> None:
        if pid is not None and pid not in self.procs:
            start = process_starttime(pid)
            if start is not None:
                self.procs[pid] = start

    def watch(self, supervisor: Supervisor) -> None:
        supervisor.on_change(lambda status: self.add(status.pid))

    def kill_all(self) -> None:
        for pid, start in self.procs.items():
            if process_starttime(pid) == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


async def wait_until(
    what: str | Callable[[], str],
    predicate: Callable[[], bool],
    timeout: float = 15.0,
    step: float = 0.02,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            text = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out after {timeout} s waiting for {text}")
        await asyncio.sleep(step)


async def wait_status(
    supervisor: Supervisor, predicate: Callable[[ChildStatus], bool], timeout: float = 15.0
) -> ChildStatus:
    await wait_until(
        lambda: f"a status of {supervisor.name} (last: {supervisor.status})",
        lambda: predicate(supervisor.status),
        timeout,
    )
    return supervisor.status


def gone(pid: int) -> bool:
    return process_starttime(pid) is None


async def daemon_then_sigkill(
    run_dir: Path, spec: ChildSpec, tracker: Tracker, name: str = "child"
) -> int:
    """Run a Supervisor in a separate process until its child is ready, then SIGKILL it."""
    payload = {
        "argv": list(spec.argv),
        "env": spec.env_dict,
        "cwd": None if spec.cwd is None else str(spec.cwd),
        "ready_url": spec.ready_url,
        "ready_timeout": spec.ready_timeout,
        "stop_timeout": spec.stop_timeout,
        "probe_tls": None
        if spec.probe_tls is None
        else {k: str(getattr(spec.probe_tls, k)) for k in ("ca", "cert", "key")},
    }
    status_file = run_dir / "daemon-status"
    daemon = subprocess.Popen(
        [
            sys.executable,
            str(RUN_SUPERVISOR),
            name,
            str(run_dir),
            json.dumps(payload),
            str(status_file),
        ],
        env=child_env(),
        stdin=subprocess.DEVNULL,
    )
    tracker.add(daemon.pid)
    child_pid = 0

    def child_ready() -> bool:
        nonlocal child_pid
        lines = status_file.read_text().split("\n") if status_file.exists() else []
        for line in lines:
            fields = line.split()
            if fields and fields[0] == "ready" and fields[2] == "True":
                child_pid = int(fields[1])
                return True
        assert daemon.poll() is None, "the stand-in daemon ended early"
        return False

    try:
        await wait_until("the stand-in daemon's child to be ready", child_ready, 20)
    finally:
        daemon.kill()  # SIGKILL: the daemon gets no chance to stop its child
        daemon.wait()
    tracker.add(child_pid)
    assert child_pid and not gone(child_pid)
    return child_pid
