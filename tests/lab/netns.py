"""A lab of machines: network namespaces joined by a bridge that lives in its own namespace.

Layout for a lab with prefix ``P`` (see README.md):

- ``P-sw`` holds the bridge ``br0`` (STP off, forward_delay 0, multicast snooping off, so multicast
  floods) and, per machine, the switch-side veth end ``<machine>-p``.
- ``P-n1`` .. ``P-nN`` (and ``P-client``, ``P-db``) each hold ``lo`` and ``eth0``, the other veth
  end, created inside the switch namespace and moved straight into the machine's namespace.

Nothing is ever created in the root namespace: no link, no address, no route. IPv6 is disabled in
every lab namespace and no namespace has a default route, so only the lab subnet and link-local
multicast leave a machine, and they stay on the lab bridge. Cleanup ends only processes the lab
started or processes inside its own namespaces, by PID, then deletes the namespaces: on ``down()``,
on leaving the ``with`` block, at interpreter exit, and on SIGTERM.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from tests.lab import faults, procs
from tests.lab.iproute import LabError, ip, ip_parallel, list_namespaces, write_sysctls

log = logging.getLogger(__name__)

MAX_MACHINES = 30
STATE_DIR = Path(os.environ.get("K3SNODED_LAB_STATE", "/run/k3snoded-lab"))
CLIENT_HOST = 250
DB_HOST = 240
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,19}$")
_counter = itertools.count(1)
_live: list[Lab] = []
_live_lock = threading.RLock()  # re-entered by the signal handler
_signals_installed = False
_pending_signals: list[int] = []

Stdio = int | IO[Any] | None
__all__ = [
    "Lab",
    "LabError",
    "Machine",
    "ip",
    "list_namespaces",
    "saved_labs",
]


def _mac(index: int) -> str:
    """n1 is 02:00:c6:12:00:01; client and db use their host number (0xfa, 0xf0)."""
    return f"02:00:c6:12:00:{index:02x}"


class Machine:
    """One lab machine: a network namespace with ``lo`` and ``eth0`` on the lab bridge."""

    interface: str = "eth0"
    stop_grace: float = 3.0  # seconds between SIGTERM and SIGKILL in stop_all/restart

    def __init__(self, lab: Lab, name: str, host: int, mac_index: int) -> None:
        self.lab = lab
        self.name = name
        self.netns = f"{lab.prefix}-{name}"
        self.address = f"{lab.subnet}.{host}"
        self.mac = _mac(mac_index)
        self.switch_port = f"{name}-p"  # the veth end inside the switch namespace
        self.procs: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"Machine({self.name!r}, {self.address}, netns={self.netns!r})"

    # ---- processes ---------------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the machine and wait (bounded by timeout); env is added to os.environ."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
            env={**os.environ, **env} if env else None,
        )

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: Stdio = subprocess.DEVNULL,
        stderr: Stdio = subprocess.DEVNULL,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start argv inside the machine, in its own session; the lab ends it at cleanup.

        ``ip netns exec`` execs the command, so ``proc.pid`` is the command itself. env is added
        to os.environ. stdin is /dev/null.
        """
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env={**os.environ, **env} if env else None,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        """Every process inside this machine's namespace (``ip netns pids``)."""
        return [int(p) for p in ip("netns", "pids", self.netns).split()]

    def kill(self, proc: subprocess.Popen[bytes] | int, sig: int = signal.SIGKILL) -> None:
        """Send sig to one process by PID: one this machine spawned, or one inside its namespace.

        A pid that no longer exists is ignored; any other pid raises ValueError (the lab never
        signals processes that are not its own).
        """
        pid = proc if isinstance(proc, int) else proc.pid
        mine = any(p.pid == pid for p in self.procs)
        where = procs.pid_netns_inode(pid)
        if where is None and not mine:
            return  # already gone (e.g. a child that died with its parent): nothing to signal
        if not (mine or where == procs.netns_inode(self.netns)):
            raise ValueError(f"pid {pid} is neither spawned by nor inside {self.name}")
        procs.signal_pid(pid, sig)

    def freeze(self, proc: subprocess.Popen[bytes] | int) -> None:
        """SIGSTOP the process: it stays alive but stops answering (state 'T')."""
        self.kill(proc, signal.SIGSTOP)

    def thaw(self, proc: subprocess.Popen[bytes] | int) -> None:
        """SIGCONT a frozen process."""
        self.kill(proc, signal.SIGCONT)

    def stop_all(self, grace: float | None = None) -> None:
        """End every process in the machine by PID: TERM, wait up to grace, then KILL."""
        procs.end(self.procs, [self.netns], grace=self.stop_grace if grace is None else grace)
        self.procs = [p for p in self.procs if p.poll() is None]

    # ---- addresses ---------------------------------------------------------------------------
    def ipv4_addresses(self) -> set[str]:
        """The IPv4 addresses on eth0 (without prefix length)."""
        out = json.loads(ip("-j", "-4", "addr", "show", "dev", self.interface, netns=self.netns))
        return {a["local"] for link in out for a in link.get("addr_info", [])}

    # ---- faults (tests/lab/faults.py) ---------------------------------------------------------
    def link_down(self) -> None:
        """Take the machine's own eth0 down: the machine sees it (routes and carrier gone)."""
        faults.link_down(self)

    def link_up(self) -> None:
        faults.link_up(self)

    def partition(self, *, carrier: bool = True) -> None:
        """Cut the machine off the bridge. carrier=True (default): the switch port leaves the
        bridge, eth0 stays up with carrier (the machine only sees silence); carrier=False: the
        switch-side veth goes down (eth0 shows NO-CARRIER)."""
        faults.partition(self, carrier=carrier)

    def heal(self) -> None:
        faults.heal(self)

    def loss(self, percent: float, *, direction: str = "both") -> None:
        """Drop percent % of eth0 packets at random (nftables ``meta random``)."""
        faults.loss(self, percent, direction=direction)

    def clear_loss(self) -> None:
        faults.clear_loss(self)

    def delay(self, ms: int) -> None:
        """Delay eth0 egress by ms (tc netem); NotImplementedError where netem is missing."""
        faults.delay(self, ms)

    def clear_delay(self) -> None:
        faults.clear_delay(self)

    def throttle(self, kbit: int) -> None:
        """Limit eth0 egress to kbit/s (tc tbf). Not a delay: an idle link stays fast."""
        faults.throttle(self, kbit)

    def clear_throttle(self) -> None:
        faults.clear_throttle(self)

    def restart(self, *, downtime: float = 0.0) -> None:
        """Machine restart: stop_all, then reset eth0 to its base state (see faults.restart)."""
        faults.restart(self, downtime=downtime)


class Lab:
    """N machines on one bridge. Use as a context manager, or call up()/down()."""

    stop_grace: float = 3.0  # seconds between SIGTERM and SIGKILL at teardown

    def __init__(
        self,
        n: int,
        *,
        name: str | None = None,
        subnet: str = "198.18.0",
        with_client: bool = False,
        with_db: bool = False,
    ) -> None:
        if not 1 <= n <= MAX_MACHINES:
            raise ValueError(
                f"a lab holds 1..{MAX_MACHINES} machines, not {n}: the kernel's ARP table "
                f"(net.ipv4.neigh.default.gc_thresh3) is shared by every namespace, and a full "
                f"mesh of more than {MAX_MACHINES} machines overflows it (lab-findings §1)"
            )
        prefix = name or f"kl{os.getpid()}x{next(_counter)}"
        if not _NAME_RE.match(prefix):
            raise ValueError(f"lab name {prefix!r} must match {_NAME_RE.pattern}")
        if not re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}", subnet):
            raise ValueError(f"subnet {subnet!r} must be the first three octets, e.g. 198.18.0")
        self.prefix = prefix
        self.subnet = subnet
        self.switch_ns = f"{prefix}-sw"
        self.machines = [Machine(self, f"n{i + 1}", 10 + i + 1, i + 1) for i in range(n)]
        self.client = Machine(self, "client", CLIENT_HOST, CLIENT_HOST) if with_client else None
        self.db = Machine(self, "db", DB_HOST, DB_HOST) if with_db else None
        self.workdir = Path(tempfile.gettempdir()) / f"k3snoded-lab-{prefix}"
        self.owner_pid = os.getpid()
        self.extra: dict[str, Any] = {}  # saved in the state file (the CLI keeps the db kind)
        self.detached = False
        self._on_down: list[Callable[[], None]] = []
        self._is_up = False
        self._closing = False

    # ---- names -------------------------------------------------------------------------------
    @property
    def all_machines(self) -> list[Machine]:
        """The machines plus client and db, when present."""
        return [*self.machines, *(m for m in (self.client, self.db) if m is not None)]

    @property
    def namespaces(self) -> list[str]:
        return [self.switch_ns, *(m.netns for m in self.all_machines)]

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.prefix}.json"

    def machine(self, name: str) -> Machine:
        """A machine by its short name (``n1``, ``client``, ``db``) or its namespace name."""
        for m in self.all_machines:
            if name in (m.name, m.netns):
                return m
        raise KeyError(f"no machine {name!r} in lab {self.prefix}")

    def split(self, *groups: Sequence[Machine]) -> None:
        """Machines in different groups cannot reach each other (nftables on the bridge)."""
        faults.split(self, groups)

    def join(self) -> None:
        """Undo split()."""
        faults.join(self)

    def on_down(self, fn: Callable[[], None]) -> None:
        """Call fn at teardown, before processes are ended (last registered, first called)."""
        self._on_down.append(fn)

    # ---- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Lab:
        """Create the namespaces, the bridge and every machine. Undoes itself if it fails."""
        if os.geteuid() != 0:
            raise PermissionError("the lab needs root (network namespaces, veth, bridge)")
        if self._is_up:
            return self
        taken = set(self.namespaces) & set(list_namespaces())
        if taken or self.state_file.exists():
            raise LabError(
                f"lab {self.prefix} already exists ({sorted(taken) or self.state_file}); "
                f"pick another name or remove it: python -m tests.lab down {self.prefix}"
            )
        _install_cleanup()
        with _live_lock:
            _live.append(self)
        self._is_up = True
        try:
            self._warn_neigh()
            self.workdir.mkdir(mode=0o755, exist_ok=True)
            self._write_state()
            ip("-b", "-", stdin="".join(f"netns add {ns}\n" for ns in self.namespaces))
            for ns in self.namespaces:
                write_sysctls(
                    ns,
                    {
                        "net/ipv6/conf/all/disable_ipv6": "1",
                        "net/ipv6/conf/default/disable_ipv6": "1",
                    },
                )
            batch = [
                "link set lo up",
                "link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
            ]
            for m in self.all_machines:
                batch.append(
                    f"link add {m.switch_port} type veth peer name {m.interface} "
                    f"netns {m.netns} address {m.mac}"
                )
                batch.append(f"link set {m.switch_port} master br0 up")
            batch.append("link set br0 up")
            ip("-b", "-", netns=self.switch_ns, stdin="\n".join(batch) + "\n")
            ip_parallel(
                {
                    m.netns: f"link set lo up\naddr add {m.address}/24 dev {m.interface}\n"
                    f"link set {m.interface} up\n"
                    for m in self.all_machines
                }
            )
        except BaseException:
            self.down()
            raise
        log.info("lab %s up: %d machines", self.prefix, len(self.all_machines))
        return self

    def down(self, grace: float | None = None) -> None:
        """End the lab's processes by PID, delete its namespaces and files. Idempotent.

        Processes get SIGTERM, then SIGKILL after grace seconds (default: stop_grace).
        """
        if not self._is_up or self._closing:
            return
        self._closing = True
        try:
            while self._on_down:
                fn = self._on_down.pop()
                try:
                    fn()
                except Exception:
                    log.exception("lab %s: teardown hook failed", self.prefix)
            existing = set(list_namespaces())
            mine = [ns for ns in self.namespaces if ns in existing]
            tracked = [p for m in self.all_machines for p in m.procs]
            procs.end(tracked, mine, grace=self.stop_grace if grace is None else grace)
            if mine:
                ip("-force", "-b", "-", stdin="".join(f"netns del {ns}\n" for ns in mine))
            left = set(mine) & set(list_namespaces())
            if left:
                raise LabError(f"lab {self.prefix}: namespaces left behind: {sorted(left)}")
            if not os.environ.get("LAB_KEEP_WORKDIR"):
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.state_file.unlink(missing_ok=True)
        finally:
            self._is_up = False
            self._closing = False
            with _live_lock:
                if self in _live:
                    _live.remove(self)
            if _pending_signals:
                _on_sigterm(_pending_signals.pop(), None)
        log.info("lab %s down", self.prefix)

    def detach(self) -> None:
        """Leave the lab running after this process exits (the CLI's ``up``)."""
        with _live_lock:
            if self in _live:
                _live.remove(self)
        self.detached = True
        self._write_state()

    # ---- state file (the CLI's ``down`` and stale-lab cleanup) --------------------------------
    def save_state(self) -> None:
        """Rewrite the state file (after changing extra)."""
        self._write_state()

    def _write_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {
            "prefix": self.prefix,
            "subnet": self.subnet,
            "n": len(self.machines),
            "with_client": self.client is not None,
            "with_db": self.db is not None,
            "owner_pid": self.owner_pid,
            "workdir": str(self.workdir),
            "namespaces": self.namespaces,
            "detached": self.detached,
            "extra": self.extra,
        }
        self.state_file.write_text(json.dumps(state, indent=1) + "\n")

    @classmethod
    def attach(cls, name: str) -> Lab:
        """The lab named in STATE_DIR/<name>.json, as a Lab whose down() removes it."""
        state = json.loads((STATE_DIR / f"{name}.json").read_text())
        lab = cls(
            state["n"],
            name=state["prefix"],
            subnet=state["subnet"],
            with_client=state["with_client"],
            with_db=state["with_db"],
        )
        lab.owner_pid = int(state["owner_pid"])
        lab.detached = bool(state.get("detached"))
        lab.extra = dict(state.get("extra", {}))
        lab._is_up = True
        return lab

    def _warn_neigh(self) -> None:
        try:
            limit = int(Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3").read_text())
        except OSError:
            return
        n = len(self.all_machines)
        if n * n > limit:
            log.warning(
                "lab %s: %d machines need ~%d ARP entries; gc_thresh3 is %d",
                self.prefix,
                n,
                n * n,
                limit,
            )


def saved_labs() -> list[str]:
    """Names of labs that have a state file."""
    return sorted(p.stem for p in STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []


def _cleanup_all() -> None:
    with _live_lock:
        labs = [lab for lab in _live if lab.owner_pid == os.getpid()]
    for lab in reversed(labs):
        try:
            lab.down()
        except Exception:
            log.exception("lab %s: cleanup failed", lab.prefix)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Tear every lab down, then die of the signal. During a down(), wait for it to finish."""
    with _live_lock:
        busy = any(lab._closing for lab in _live)
    if busy:
        _pending_signals.append(signum)  # down() re-delivers it when it is done
        return
    _cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_cleanup() -> None:
    global _signals_installed  # noqa: PLW0603 - installed once per process
    if _signals_installed:
        return
    _signals_installed = True
    atexit.register(_cleanup_all)
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGHUP, _on_sigterm)
