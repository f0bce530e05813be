"""Start the stand-in k3s as a real process, watch its output, end it by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
K3S = REPO / "tests" / "fakes" / "k3s"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K3S_", "FAKE_K3S_"))}
    env.pop("NOTIFY_SOCKET", None)
    env["K3S_FAKE_BOOTSTRAP_WINDOW"] = "0"  # no race window unless a test asks for one
    env.update(extra or {})
    return env


@dataclass
class K3s:
    """One running stand-in process; stdout/stderr go to files under ``logdir``."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.proc.poll() is not None and self.log().count(text) < count:
                raise AssertionError(
                    f"k3s exited {self.proc.returncode} before logging {text!r}:\n{self.log()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"k3s still running after {timeout}s:\n{self.log()}") from None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class Launcher:
    """Starts stand-in processes and ends every one of them (by PID) at teardown."""

    logdir: Path
    started: list[K3s] = field(default_factory=list)

    def start(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, name: str = "k3s"
    ) -> K3s:
        n = len(self.started)
        out = self.logdir / f"{name}-{n}.out"
        err = self.logdir / f"{name}-{n}.err"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen([str(K3S), *args], stdout=o, stderr=e, env=clean_env(env))
        k = K3s(proc, out, err)
        self.started.append(k)
        return k

    def run(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 20.0
    ) -> tuple[int, str, str]:
        k = self.start(args, env)
        rc = k.wait_exit(timeout)
        return rc, k.stdout(), k.log()

    def stop_all(self) -> None:
        for k in self.started:
            k.kill()


@contextlib.contextmanager
def notify_socket(path: Path | None) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket to receive sd_notify messages; ``None`` = an abstract name."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if path is None:
        name = f"@fake-k3s-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name[1:])
    else:
        name = str(path)
        sock.bind(name)
    try:
        yield sock, name
    finally:
        sock.close()


class TcpProxy:
    """A loopback TCP proxy the test can cut (to simulate losing the datastore)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        self._blocked = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._cut:
                client.close()
                return
            if self._blocked:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)

    def block(self) -> None:
        """Drop every proxied connection and refuse new ones until ``unblock()``."""
        self._blocked = True
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()

    def unblock(self) -> None:
        self._blocked = False

    def cut(self) -> None:
        """Close the listener and every proxied connection."""
        self._cut = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()


@dataclass(frozen=True)
class Node:
    """Where one stand-in node keeps its state: a private root and data dir."""

    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "var/lib/rancher/k3s"

    @property
    def server_dir(self) -> Path:
        return self.data_dir / "server"

    @property
    def env(self) -> dict[str, str]:
        return {"K3S_FAKE_ROOT": str(self.root)}

    def server_args(self, *extra: str, ip: str = "127.0.0.1") -> list[str]:
        return [
            "server",
            "--https-listen-port",
            str(self.port),
            "--node-ip",
            ip,
            "--bind-address",
            ip,
            "--node-name",
            self.root.name,
            *extra,
        ]


def new_node(base: Path, name: str) -> Node:
    root = base / name
    root.mkdir(parents=True, exist_ok=True)
    return Node(root, free_port())
