"""A supervised child as values (spec, status), its identity, pidfile and readiness probe.

A pid alone does not name a process: pids are reused. A process is identified here by its pid
plus its start time (field 22 of ``/proc/<pid>/stat``, in clock ticks since boot), which no
later process with the same pid can share. k3s hides its argv, so the command line is not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import signal
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from k3snoded.model import ChildState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeTls:
    """TLS for the readiness probe: verify the server against ``ca`` and present a client
    certificate. The files are read at each new connection: they may appear only once the
    child has started, and may be rotated."""

    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        """A verifying client context (OSError/ssl.SSLError while the files are not there)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        # Python 3.13 turns on OpenSSL's X509_STRICT by default, which refuses a certificate
        # without an Authority Key Identifier; k3s's certificates issued by a CA that has no
        # Subject Key Identifier (CAs made by old k3s releases) have none. The chain is still
        # verified against this cluster's own CA file.
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


@dataclass(frozen=True)
class ChildSpec:
    """What to run. ``env`` is the complete environment, as sorted (name, value) pairs.

    Readiness is the child's READY=1 on its private NOTIFY_SOCKET, then (when ``ready_url`` is
    set) an HTTPS GET of that URL answering 200 (with ``probe_tls``: verified, with a client
    certificate); both within ``ready_timeout`` seconds of exec. ``ready_timeout`` None: the
    child may take as long as it needs and is never stopped for not being ready.
    """

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: Path | None = None
    ready_url: str | None = None
    ready_timeout: float | None = 300.0
    stop_timeout: float = 30.0
    probe_tls: ProbeTls | None = None

    @classmethod
    def build(
        cls,
        argv: list[str] | tuple[str, ...],
        env: Mapping[str, str],
        *,
        cwd: Path | None = None,
        ready_url: str | None = None,
        ready_timeout: float | None = 300.0,
        stop_timeout: float = 30.0,
        probe_tls: ProbeTls | None = None,
    ) -> ChildSpec:
        return cls(
            tuple(argv),
            tuple(sorted(env.items())),
            cwd,
            ready_url,
            ready_timeout,
            stop_timeout,
            probe_tls,
        )

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @functools.cached_property
    def identity(self) -> str:
        """A hash of what the process was started with (argv, env, cwd), kept in the pidfile.

        Readiness and stop settings are not part of it: changing them restarts nothing.
        Computed once per spec (the supervisor compares it at every probe, twice a second).
        """
        blob = json.dumps([self.argv, self.env, str(self.cwd or "")]).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class ChildStatus:
    """A snapshot of the supervised child, for the daemon, the API and the logs."""

    state: ChildState = ChildState.STOPPED
    pid: int | None = None
    ready: bool = False
    restarts: int = 0
    last_exit: int | None = None  # exit status; 128+N when killed by signal N; None if unknown
    crash_loop: bool = False
    since: float = 0.0  # wall-clock time of the last state change
    adopted: bool = False
    message: str = ""


@dataclass(frozen=True)
class PidRecord:
    """What a supervisor writes about its running child, to adopt it after a daemon restart.

    ``boot_id`` names the boot the pid and start time belong to (start times are clock ticks
    since boot, so after a reboot another process can have both): a record from another boot
    is never trusted. Records written before it was kept have ``boot_id`` "".
    """

    pid: int
    starttime: int
    identity: str  # ChildSpec.identity of what the process was started with
    ready_url: str | None = None
    ready_timeout: float | None = 300.0
    stop_timeout: float = 30.0
    boot_id: str = ""
    probe_tls: ProbeTls | None = None


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``), or "" when unreadable."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def process_starttime(pid: int) -> int | None:
    """The start time of a live process, or None when there is none (gone, or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may hold spaces and parentheses: the fields after it start past the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def session_of(pid: int) -> int | None:
    """The session id of a process, or None when it is gone."""
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def describe_exit(status: int | None) -> str:
    """'exited with status 1', 'was killed by signal 9 (SIGKILL)', or 'exited' when unknown."""
    if status is None:
        return "exited"
    if status > 128 and status - 128 < signal.NSIG:
        try:
            name = signal.Signals(status - 128).name
        except ValueError:
            name = f"signal {status - 128}"
        return f"was killed by signal {status - 128} ({name})"
    return f"exited with status {status}"


def write_pidfile(path: Path, record: PidRecord) -> None:
    """Write the pidfile atomically (temp file, fsync, rename), mode 0600. Blocking."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    data = asdict(record)
    if record.probe_tls is not None:
        data["probe_tls"] = {k: str(v) for k, v in asdict(record.probe_tls).items()}
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_pidfile(path: Path) -> PidRecord | None:
    """The record in the pidfile, or None when it is missing or unreadable (logged)."""
    try:
        data = json.loads(path.read_text())
        tls = data.get("probe_tls")
        timeout = data.get("ready_timeout", 300.0)
        return PidRecord(
            pid=int(data["pid"]),
            starttime=int(data["starttime"]),
            identity=str(data["identity"]),
            ready_url=None if data.get("ready_url") is None else str(data["ready_url"]),
            ready_timeout=None if timeout is None else float(timeout),
            stop_timeout=float(data.get("stop_timeout", 30.0)),
            boot_id=str(data.get("boot_id") or ""),
            probe_tls=None
            if tls is None
            else ProbeTls(Path(tls["ca"]), Path(tls["cert"]), Path(tls["key"])),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable pidfile %s: %s", path, exc)
        return None


def remove_pidfile(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def insecure_tls_context() -> ssl.SSLContext:
    """TLS without certificate checks: the probe targets a local endpoint with a private CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_FAILURES = (OSError, ssl.SSLError, EOFError, ValueError, asyncio.LimitOverrunError)


class HttpProbe:
    """``GET url`` (http or https) over one kept-alive connection: the status code, or None.

    The readiness probe runs every second for as long as k3s runs; a fresh TLS handshake each
    time was most of the daemon's idle CPU. The connection is reopened after any failure, so
    a restarted k3s is reached again on the next probe. ``ctx`` is a TLS context, or a
    function making one for each new connection (certificate files that can change).
    """

    def __init__(self, url: str, ctx: ssl.SSLContext | Callable[[], ssl.SSLContext]) -> None:
        parts = urlsplit(url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._tls else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = parts.netloc.rpartition("@")[2]
        self._request = f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\n\r\n".encode()
        self._ctx = ctx
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def status(self, seconds: float) -> int | None:
        try:
            async with asyncio.timeout(seconds):
                if self._conn is not None:
                    try:
                        return await self._exchange()
                    except _FAILURES:
                        self.close()  # a kept connection went stale (k3s restarted): reopen once
                return await self._exchange()
        except (*_FAILURES, TimeoutError):
            self.close()
            return None

    async def _exchange(self) -> int | None:
        if self._conn is None:
            ctx = self._ctx if isinstance(self._ctx, ssl.SSLContext) else self._ctx()
            self._conn = await asyncio.open_connection(
                self._host, self._port, ssl=ctx if self._tls else None
            )
        reader, writer = self._conn
        writer.write(self._request)
        line = await reader.readline()
        fields = line.split()
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
            raise ValueError("not an HTTP answer")
        length, keep = 0, True
        for _ in range(100):  # headers; a bounded number of them
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
            elif name == b"transfer-encoding":
                keep = False  # not worth parsing chunks for a health check
        if keep and 0 <= length <= 65536:
            await reader.readexactly(length)
        else:
            self.close()
        return int(fields[1])

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].transport.abort()  # no TLS close_notify dance: nothing more to say
            self._conn = None
