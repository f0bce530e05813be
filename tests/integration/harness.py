"""Runs one real k3snoded (``python -m k3snoded run``) with the stand-in k3s in a private network
namespace, so k3s's fixed port 6443 never collides with anything else on the machine.

Knobs of the stand-in go into a wrapper script used as ``k3s.binary``: k3snoded scrubs ``K3S_*``
from its child's environment, exactly as it would for the real binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from k3snoded.api import fetch_status

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
FAKE_K3S = REPO / "tests" / "fakes" / "k3s"
TOKEN = "k3snoded-test-token-0123456789abcdef"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class NotifySink:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        for _ in range(10_000):
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            self.messages.extend(data.decode().split("\n"))
        return self.messages

    def close(self) -> None:
        self.sock.close()


class DaemonHarness:
    def __init__(
        self,
        tmp: Path,
        *,
        config: Mapping[str, Any] | None = None,
        fake_env: Mapping[str, str] | None = None,
        name: str = "t1",
    ) -> None:
        self.tmp = tmp
        self.netns = f"k3it-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "daemon.log"
        self.token_file = tmp / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        self.state_dir = tmp / "state"
        self.run_dir = tmp / "run"
        self.data_dir = tmp / "k3s"
        self.fake_root = tmp / "root"
        self.fake_root.mkdir()
        self.wrapper = tmp / "k3s-wrapper"
        env_lines = "".join(
            f"export {k}='{v}'\n"
            for k, v in {"K3S_FAKE_ROOT": str(self.fake_root), **(fake_env or {})}.items()
        )
        self.wrapper.write_text(f'#!/bin/sh\n{env_lines}exec "{FAKE_K3S}" "$@"\n')
        self.wrapper.chmod(0o755)
        base: dict[str, Any] = {
            "cluster": {"name": "test", "token_file": str(self.token_file)},
            "node": {
                "name": name,
                "address": "127.0.0.1",
                "interface": "lo",
                "state_dir": str(self.state_dir),
                "run_dir": str(self.run_dir),
            },
            "k3s": {
                "binary": str(self.wrapper),
                "data_dir": str(self.data_dir),
                "node_password_file": str(self.fake_root / "etc/rancher/node/password"),
            },
            "servers": {"count": 1},
            "registration": {"vip": {"enabled": False}},
            "discovery": {"mdns": False},
            "api": {"listen": ""},
        }
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        self.config_path = tmp / "config.yaml"
        self.write_config(base)
        self.notify = NotifySink(tmp / "notify.sock")
        _run("ip", "netns", "add", self.netns)
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")

    def write_config(self, data: Mapping[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(dict(data)))

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "k3snoded.sock"

    def start(self, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NOTIFY_SOCKET": str(self.notify.path),
            **(extra_env or {}),
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                str(PYTHON),
                "-m",
                "k3snoded",
                "run",
                "--config",
                str(self.config_path),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            start_new_session=True,
            umask=0o077,  # as the unit's UMask=
        )
        log.close()
        return self.proc

    def status(self) -> dict[str, Any]:
        return asyncio.run(fetch_status(self.socket_path, limit=2.0))

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30.0, what: str = ""
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                last = self.status()
                if pred(last):
                    return last
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last status {last}\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def netns_pids(self) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.netns],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in self.netns_pids():  # anything left inside our own namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.netns_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(
            ["ip", "netns", "del", self.netns], capture_output=True, timeout=30, check=False
        )
        self.notify.close()
