"""sd_notify both ways, over real unix datagram sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3snoded.notify import (
    NotifyListener,
    NotifyMessage,
    SystemdNotifier,
    parse_message,
    watchdog_interval,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="k3sn-", dir="/tmp") as d:
        yield Path(d)


def _receiver(path: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock


def test_notifier_sends_to_a_path_socket(short_dir: Path) -> None:
    path = short_dir / "notify"
    with _receiver(str(path)) as rx:
        notifier = SystemdNotifier(str(path))
        assert notifier.enabled
        assert notifier.ready(status="k3s server ready")
        assert rx.recv(4096) == b"READY=1\nSTATUS=k3s server ready"
        assert notifier.status("line one\nline two")
        assert rx.recv(4096) == b"STATUS=line one line two"
        assert notifier.watchdog()
        assert rx.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping()
        assert rx.recv(4096) == b"STOPPING=1"
        notifier.close()


def test_notifier_sends_to_an_abstract_socket() -> None:
    name = f"k3snoded-test-{os.getpid()}"
    with _receiver(b"\0" + name.encode()) as rx:
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert rx.recv(4096) == b"READY=1"
        notifier.close()


def test_notifier_without_socket_is_a_noop() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_notifier_to_a_missing_socket_fails_quietly(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(str(short_dir / "absent"))
    assert not notifier.ready()
    assert not notifier.status("x")
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1  # logged once, then quietly
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_parse_message() -> None:
    assert parse_message(b"READY=1\nSTATUS=a=b\n\ngarbage\n=x") == {
        "READY": "1",
        "STATUS": "a=b",
    }


async def test_listener_receives_with_sender_pid(short_dir: Path) -> None:
    path = short_dir / "child.notify"
    async with NotifyListener(path) as listener:
        assert listener.path == path
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600
        # A separate process, as a child would be: the pid comes from SO_PASSCRED.
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
                "s.sendto(b'READY=1\\nSTATUS=up', os.environ['NOTIFY_SOCKET']); print(os.getpid())",
            ],
            env={**os.environ, "NOTIFY_SOCKET": str(listener.path)},
            capture_output=True,
            check=True,
            text=True,
        )
        message = await asyncio.wait_for(listener.messages.get(), 5)
        assert message.fields == {"READY": "1", "STATUS": "up"}
        assert message.pid == int(proc.stdout)
    assert not path.exists()


async def test_listener_callback_and_notifier_roundtrip(short_dir: Path) -> None:
    got: list[NotifyMessage] = []
    path = short_dir / "cb.notify"
    path.write_text("stale")  # a leftover file from a previous run is replaced
    async with NotifyListener(path, got.append) as listener:
        notifier = SystemdNotifier(str(listener.path))
        for _ in range(3):
            notifier.watchdog()
        notifier.close()
        for _ in range(100):
            if len(got) == 3:
                break
            await asyncio.sleep(0.01)
    assert [m.fields for m in got] == [{"WATCHDOG": "1"}] * 3
    assert all(m.pid == os.getpid() for m in got)


def test_listener_rejects_overlong_path() -> None:
    with pytest.raises(ValueError, match="too long"):
        NotifyListener(Path("/tmp/" + "x" * 120))
