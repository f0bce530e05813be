"""Machines booted with systemd as PID 1: systemd-nspawn containers inside the lab's namespaces.

Each ``Booted`` machine is one ``tests.lab`` machine (a network namespace with ``eth0`` on the
lab bridge) whose processes now run in a container: a Debian root from
``scripts/systemd-lab-root`` (built once per suite, cached) under a private overlayfs upper
layer, booted with ``systemd-nspawn -b`` and ``--network-namespace-path``, so the container has
exactly the lab machine's network and nothing in the root namespace. Inside it, systemd 252
(Debian 12) or 257 (Debian 13) runs as PID 1; commands run with ``nsenter`` into the
container's namespaces (lab-findings §9).

The checkout (read-only) and the interpreter its ``.venv`` links to are bind-mounted at their
own paths, so the stand-in k3s (``tests/fakes/k3s``) runs inside as ``/usr/local/bin/k3s``.
k3snoded itself runs only from the installed .deb.

Cleanup: the lab's teardown hook powers the container off (SIGTERM to systemd-nspawn: an
orderly shutdown), SIGKILLs it after a bound, unmounts the overlay and removes the upper
layer. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.lab.netns import Lab, Machine

REPO = Path(__file__).resolve().parents[2]
ROOT_SCRIPT = REPO / "scripts" / "systemd-lab-root"
SUITES = {"debian12": "bookworm", "debian13": "trixie"}
BOOT_TIMEOUT = 90.0


class SystemdLabError(RuntimeError):
    pass


def cached_root(suite: str, timeout: float = 900) -> Path:
    """The cached Debian root for ``suite`` (bookworm, trixie), built on first use."""
    proc = subprocess.run(
        [str(ROOT_SCRIPT), suite], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise SystemdLabError(f"systemd-lab-root {suite} failed:\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _interpreter_prefix() -> Path:
    """The installation the checkout's .venv links to (pyenv here), to bind-mount it."""
    real = (REPO / ".venv" / "bin" / "python3").resolve()
    return real.parent.parent


class Booted:
    """A lab machine running a container with systemd as PID 1."""

    def __init__(self, machine: Machine, root: Path, *, suite: str) -> None:
        self.machine = machine
        self.name = machine.name
        self.suite = suite
        self.root = root
        self.dir = machine.lab.workdir / f"nspawn-{machine.name}"
        self.upper = self.dir / "upper"
        self.work = self.dir / "work"
        self.merged = self.dir / "merged"
        self.log_path = self.dir / "nspawn.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None  # the container's PID 1, seen from here
        self._mounted = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def boot(self) -> None:
        """Mount the overlay and start the container; returns once systemd answers."""
        self.prepare()
        self.start()
        self.wait_running()

    def prepare(self) -> None:
        """Mount the machine's overlay of the cached root (idempotent)."""
        if self._mounted:
            return
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={self.root},upperdir={self.upper},workdir={self.work}"
        _run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.merged)])
        self._mounted = True

    def offline(self, argv: Sequence[str], timeout: float = 300) -> str:
        """Run argv in the (not booted) root, as in a chroot: to install before the first boot."""
        self.prepare()
        proc = subprocess.run(
            ["systemd-nspawn", "-q", "-D", str(self.merged), "--register=no", "--keep-unit",
             "--pipe", "--", *argv],
            capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemdLabError(f"{self.name}: {shlex.join(argv)}: {proc.stderr}")
        return proc.stdout

    def start(self) -> None:
        """Start the container (systemd as PID 1); returns once its PID 1 exists."""
        self.prepare()
        prefix = _interpreter_prefix()
        argv = [
            "systemd-nspawn",
            "--quiet",
            "-D",
            str(self.merged),
            "-b",
            "--register=no",
            "--keep-unit",
            "--console=passive",
            f"--machine={self.name}",
            f"--network-namespace-path=/run/netns/{self.machine.netns}",
            # nspawn keeps CAP_NET_ADMIN only with a network it made itself; k3snoded, as root
            # on a real machine, manages addresses (the VIP) and needs it.
            "--capability=CAP_NET_ADMIN",
            f"--bind-ro={REPO}",
            f"--bind-ro={prefix}",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.leader = self._wait_leader()

    def _wait_leader(self) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemdLabError(f"systemd-nspawn exited:\n{self.log_path.read_text()}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                if pids:
                    return int(pids[0])
            time.sleep(0.05)
        raise SystemdLabError(f"{self.name}: no container process after 30 s")

    def wait_running(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        state, said = "", ""
        while time.monotonic() < deadline:
            answer = self.sh("systemctl is-system-running", check=False)
            state, said = answer.stdout.strip(), answer.stderr.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.2)
        exited = "" if self.proc is None or self.proc.poll() is None else " (nspawn exited)"
        log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise SystemdLabError(
            f"{self.name}: system state {state!r} after {BOOT_TIMEOUT} s{exited}; "
            f"systemctl said {said!r}; nspawn's log ends:\n{log}"
        )

    def shutdown(self, timeout: float = 30.0) -> None:
        """Power the container off (orderly), unmount, remove its upper layer. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn: an orderly shutdown of the container
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._mounted:
            for _ in range(50):
                if subprocess.run(["umount", str(self.merged)], check=False).returncode == 0:
                    break
                time.sleep(0.1)
            self._mounted = False
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- inside the container ----------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container (all its namespaces) and wait, bounded by timeout."""
        if self.leader is None:
            raise SystemdLabError(f"{self.name} is not booted")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
            env=env,
        )
        if check and proc.returncode != 0:
            raise SystemdLabError(
                f"{self.name}: {shlex.join(argv)}: rc {proc.returncode}\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], **kw)  # type: ignore[arg-type]

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the container (through the overlay's merged view)."""
        target = self.merged / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def read(self, path: str) -> str:
        return (self.merged / path.lstrip("/")).read_text()

    def exists(self, path: str) -> bool:
        return (self.merged / path.lstrip("/")).exists()

    def copy_in(self, src: Path, dst: str) -> None:
        target = self.merged / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)

    def host_pid(self, pid_in_container: int) -> int | None:
        """Not needed: nspawn shares the pid namespace view through nsenter; kept for clarity."""
        return pid_in_container

    # ---- systemd -----------------------------------------------------------------------------
    def systemctl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return self.run(["systemctl", *args], check=check, timeout=timeout).stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str = "k3snoded") -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def journal(self, *args: str) -> str:
        return self.run(["journalctl", "--no-pager", *args], check=False).stdout

    def wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.2)
        raise AssertionError(
            f"{self.name}: timed out after {timeout} s waiting for {what}\n"
            f"{self.journal('-u', 'k3snoded', '-n', '60')}"
        )


class SystemdLab:
    """Boots machines of a Lab as systemd containers and shuts them down at lab teardown."""

    def __init__(self, lab: Lab, suite: str) -> None:
        self.lab = lab
        self.suite = suite
        self.root = cached_root(suite)
        self.booted: list[Booted] = []
        lab.on_down(self.shutdown_all)

    def boot(self, machines: Sequence[Machine]) -> list[Booted]:
        out = []
        for m in machines:
            b = Booted(m, self.root, suite=self.suite)
            self.booted.append(b)
            b.boot()
            out.append(b)
        return out

    def shutdown_all(self) -> None:
        for b in reversed(self.booted):
            b.shutdown()
        self.booted.clear()


def _run(argv: Sequence[str]) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise SystemdLabError(f"{shlex.join(argv)}: {proc.stderr.strip()}")


def need_systemd_lab_tools() -> str | None:
    """Why the systemd lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the systemd lab needs root"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"missing {tool} (scripts/setup.sh installs systemd-container and debootstrap)"
    return None
