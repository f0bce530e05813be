"""keepalived (Debian's 2.2.x) inside a lab machine: the VRRP interop peer and failover baseline.

    ka = keepalived.start(lab.machines[0], keepalived.VrrpConfig(vip="198.18.0.100/24",
                          priority=150, state="MASTER"))
    ka.vrrp_pid()          # the VRRP child (lab-findings §3: SIGKILL both to leave a stale VIP)
    ka.kill_both()         # SIGKILL parent and child: the VIP stays where it was

keepalived runs as ``keepalived -n -l -G -D -P -f CONF -p PID -r VRRP_PID`` in the foreground;
its log (console) goes to ``<workdir>/keepalived-<machine>.log``. VRRPv3 by default: v2 only allows
whole-second advert intervals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab import procs
from tests.lab.netns import Machine


@dataclass(frozen=True)
class VrrpConfig:
    vip: str  # "198.18.0.100/24"
    priority: int = 100
    vrid: int = 51
    advert_int: float = 0.1
    state: str = "BACKUP"  # MASTER or BACKUP (keepalived 2.2 always starts in BACKUP anyway)
    version: int = 3
    instance: str = "VI_1"
    unicast_peers: tuple[str, ...] = ()  # addresses; empty = multicast to 224.0.0.18
    nopreempt: bool = False
    password: str | None = None  # VRRPv2 PASS authentication only
    # keepalived >= 2.4 built with auth_hmac: a file holding "hex:<key>" (key id 1, enforce)
    auth_hmac_key_file: Path | None = None

    def render(self, machine: Machine) -> str:
        if self.version == 2 and self.advert_int != int(self.advert_int):
            raise ValueError("VRRPv2 needs a whole-second advert_int (lab-findings §3)")
        if self.state not in ("MASTER", "BACKUP"):
            raise ValueError(f"state must be MASTER or BACKUP, not {self.state!r}")
        lines = [
            "global_defs {",
            f"  router_id {machine.name}",
            f"  vrrp_version {self.version}",
            "}",
            f"vrrp_instance {self.instance} {{",
            f"  state {self.state}",
            f"  interface {machine.interface}",
            f"  virtual_router_id {self.vrid}",
            f"  priority {self.priority}",
            f"  advert_int {self.advert_int:g}",
        ]
        if self.nopreempt:
            lines.append("  nopreempt")
        if self.password and self.version == 2:
            lines += [
                "  authentication {",
                "    auth_type PASS",
                f"    auth_pass {self.password}",
                "  }",
            ]
        if self.auth_hmac_key_file is not None:
            lines += [
                "  auth_hmac {",
                f"    key 1 file:{self.auth_hmac_key_file}",
                "    active_key 1",
                "  }",
            ]
        if self.unicast_peers:
            lines.append(f"  unicast_src_ip {machine.address}")
            lines.append("  unicast_peer {")
            lines += [f"    {p}" for p in self.unicast_peers if p != machine.address]
            lines.append("  }")
        lines += [
            "  virtual_ipaddress {",
            f"    {self.vip} dev {machine.interface}",
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Keepalived:
    machine: Machine
    config: VrrpConfig
    proc: subprocess.Popen[bytes]
    conf_file: Path
    pid_file: Path
    vrrp_pid_file: Path
    log_file: Path

    @property
    def pid(self) -> int:
        """The keepalived parent process."""
        return self.proc.pid

    def vrrp_pid(self, timeout: float = 5.0) -> int:
        """The VRRP child's pid (from its pid file, checked to be a live child of the parent)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                pid = int(self.vrrp_pid_file.read_text().strip())
                if procs.alive(pid) and _ppid(pid) == self.proc.pid:
                    return pid
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"keepalived in {self.machine.name}: no VRRP child after "
                    f"{timeout} s; see {self.log_file}"
                )
            time.sleep(0.02)

    def holds_vip(self) -> bool:
        return self.config.vip.split("/")[0] in self.machine.ipv4_addresses()

    def wait_vip(self, present: bool = True, timeout: float = 10.0) -> float:
        """Wait until this machine holds (or no longer holds) the VIP; return seconds waited."""
        t0 = time.monotonic()
        while self.holds_vip() != present:
            if time.monotonic() - t0 >= timeout:
                raise TimeoutError(
                    f"{self.machine.name}: VIP present={not present} after {timeout} s"
                )
            time.sleep(0.01)
        return time.monotonic() - t0

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (keepalived sends priority 0 and removes the VIP), wait; KILL if stuck."""
        child = None
        with contextlib.suppress(OSError, ValueError):
            child = int(self.vrrp_pid_file.read_text().strip())
        extra = [child] if child is not None and _ppid(child) == self.proc.pid else []
        procs.end([self.proc], [], extra_pids=extra, grace=timeout)

    def kill_both(self) -> tuple[int, int]:
        """SIGKILL the VRRP child and the parent at once: no cleanup, the VIP stays behind."""
        child = self.vrrp_pid()
        procs.signal_pid(child, signal.SIGKILL)
        procs.signal_pid(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        return self.proc.pid, child


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def hmac_binary() -> str | None:
    """A keepalived with auth_hmac (>= 2.4, built locally): ``$K3SNODED_KEEPALIVED_HMAC``.

    Debian 12's keepalived 2.2.7 has none; docs/vrrp.md says how the interop was checked.
    """
    path = os.environ.get("K3SNODED_KEEPALIVED_HMAC", "")
    return path if path and os.access(path, os.X_OK) else None


def start(
    machine: Machine,
    config: VrrpConfig,
    *,
    workdir: Path | None = None,
    binary: str = "keepalived",
) -> Keepalived:
    """Write the config and spawn keepalived inside machine (ended at lab teardown)."""
    base = workdir or machine.lab.workdir
    base.mkdir(parents=True, exist_ok=True)
    stem = base / f"keepalived-{machine.name}-{config.instance}"
    conf = stem.with_suffix(".conf")
    conf.write_text(config.render(machine))
    pid_file, vrrp_pid_file = stem.with_suffix(".pid"), stem.with_suffix(".vrrp.pid")
    log_file = stem.with_suffix(".log")
    for f in (pid_file, vrrp_pid_file):
        f.unlink(missing_ok=True)
    with log_file.open("ab") as log:
        proc = machine.spawn(
            [
                binary,
                "-n",
                "-l",
                "-G",
                "-D",
                "-P",
                "-f",
                str(conf),
                "-p",
                str(pid_file),
                "-r",
                str(vrrp_pid_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Keepalived(machine, config, proc, conf, pid_file, vrrp_pid_file, log_file)
