"""A k3snoded fleet in a lab: one daemon per machine, the stand-in k3s under each.

Every machine gets the same ``config.yaml`` (as an operator would deploy it) plus a drop-in with
what differs per machine: its name, and for agent-only machines ``role: agent`` and no datastore
credentials. Knobs of the stand-in go into a per-machine wrapper used as ``k3s.binary``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from k3snoded.api import fetch_status
from tests.lab.netns import Lab, Machine

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
FAKE_K3S = REPO / "tests" / "fakes" / "k3s"
VIP = "198.18.0.100"
TOKEN = "lab-fleet-token-7f3a9c2e5b8d41f6"

Status = dict[str, Any]


class FleetNode:
    def __init__(self, fleet: Fleet, machine: Machine, *, agent_only: bool) -> None:
        self.fleet = fleet
        self.machine = machine
        self.name = machine.name
        self.agent_only = agent_only
        self.dir = fleet.workdir / machine.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root = self.dir / "root"
        self.root.mkdir(exist_ok=True)
        self.run_dir = self.dir / "run"
        self.state_dir = self.dir / "state"
        self.data_dir = self.dir / "k3s"
        self.log_path = self.dir / "k3snoded.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.fake_env: dict[str, str] = {}
        self.overrides: dict[str, Any] = {}  # merged into this machine's drop-in

    @property
    def node_password_file(self) -> Path:
        return self.root / "etc" / "rancher" / "node" / "password"

    @property
    def config_dir(self) -> Path:
        return self.dir / "etc"

    @property
    def socket(self) -> Path:
        return self.run_dir / "k3snoded.sock"

    def write_config(self) -> None:
        etc = self.config_dir
        (etc / "config.d").mkdir(parents=True, exist_ok=True)
        (etc / "config.yaml").write_text(yaml.safe_dump(self.fleet.common_config()))
        wrapper = self.dir / "k3s-wrapper"
        env = {"K3S_FAKE_ROOT": str(self.root), **self.fleet.fake_env, **self.fake_env}
        if self.fleet.releases:
            # k3s.binary is a release file k3snoded installs and upgrades itself; the knobs
            # go to the stand-in's knob file in the data dir, which no upgrade replaces.
            self.data_dir.mkdir(parents=True, exist_ok=True)
            knobs = "".join(f"{k}={v}\n" for k, v in env.items())
            (self.data_dir / "fake-k3s.env").write_text(knobs)
            wrapper = self.dir / "bin" / "k3s"
        lines = "".join(f"export {k}='{v}'\n" for k, v in env.items())
        # K3S_REAL_BINARY (the demo's K3S_BINARY) runs a real k3s instead of the stand-in.
        target = env.pop("K3S_REAL_BINARY", "") or str(FAKE_K3S)
        lines = "".join(f"export {k}='{v}'\n" for k, v in env.items())
        if not self.fleet.releases:
            wrapper.write_text(f'#!/bin/sh\n{lines}exec "{target}" "$@"\n')
            wrapper.chmod(0o755)
        node: dict[str, Any] = {
            "node": {
                "name": self.name,
                "address": self.machine.address,
                "interface": "eth0",
                "state_dir": str(self.state_dir),
                "run_dir": str(self.run_dir),
            },
            "k3s": {
                "binary": str(wrapper),
                "data_dir": str(self.data_dir),
                "node_password_file": str(self.node_password_file),
            },
        }
        if self.agent_only:
            node["node"]["role"] = "agent"
        if self.agent_only and not self.fleet.agents_in_fleet:
            node["datastore"] = {"endpoint": ""}
            if not self.fleet.agents_know_registration:
                node["registration"] = {"address": None}  # unset: learn it from peers
        for key, value in self.overrides.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                node[key] = {**node[key], **value}
            else:
                node[key] = value
        (etc / "config.d" / "50-machine.yaml").write_text(yaml.safe_dump(node))

    def start(self) -> None:
        self.write_config()
        log = self.log_path.open("ab")
        try:
            self.proc = self.machine.spawn(
                [
                    str(PYTHON),
                    "-m",
                    "k3snoded",
                    "run",
                    "--config",
                    str(self.config_dir / "config.yaml"),
                ],
                env={"PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        finally:
            log.close()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 45.0) -> int | None:
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the daemon only (k3s, in its own process group, survives)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def status(self) -> Status | None:
        try:
            return asyncio.run(fetch_status(self.socket, limit=2.0))
        except OSError:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Fleet:
    def __init__(
        self,
        lab: Lab,
        *,
        endpoint: str,
        eligible: int,
        agents: int,
        servers: int = 2,
        vip: bool = True,
        mdns: bool = True,
        seeds: Sequence[str] = (),
        fake_env: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        agents_know_registration: bool = True,
        releases: bool = False,
        agents_in_fleet: bool = False,
    ) -> None:
        if eligible + agents > len(lab.machines):
            raise ValueError("not enough machines in the lab")
        self.lab = lab
        self.endpoint = endpoint
        self.servers = servers
        self.vip = vip
        self.mdns = mdns
        self.seeds = list(seeds)
        self.fake_env = dict(fake_env or {})
        self.extra = dict(extra or {})
        self.agents_know_registration = agents_know_registration
        # releases: k3s.binary is installed (k3s.install: auto) from a release mirror the test
        # serves, so k3snoded can upgrade it; agents_in_fleet: agent-only machines carry the
        # datastore credentials (node.role agent), so the coordinator's rollout reaches them.
        self.releases = releases
        self.agents_in_fleet = agents_in_fleet
        self.workdir = lab.workdir / "fleet"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token_file = self.workdir / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        machines = lab.machines[: eligible + agents]
        self.nodes = [FleetNode(self, m, agent_only=i >= eligible) for i, m in enumerate(machines)]
        lab.on_down(self.stop_all)

    def common_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "cluster": {"name": "lab", "token_file": str(self.token_file)},
            "datastore": {"endpoint": self.endpoint},
            "servers": {"count": self.servers},
            "registration": {
                "address": VIP,
                "vip": {"enabled": self.vip, "interface": "eth0", "prefix": 24},
            },
            "discovery": {"mdns": self.mdns, "seeds": self.seeds},
            "api": {"listen": "0.0.0.0:6480"},
        }
        for key, value in self.extra.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        return cfg

    def node(self, name: str) -> FleetNode:
        return next(n for n in self.nodes if n.name == name)

    def start_all(self) -> None:
        for n in self.nodes:
            n.write_config()
        for n in self.nodes:  # as close to "the same instant" as processes allow
            n.start()

    def stop_all(self) -> None:
        running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for n in running:
            n.signal(signal.SIGTERM)
        deadline = time.monotonic() + 45
        for n in running:
            assert n.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if n.proc.poll() is None:
                n.proc.kill()

    def statuses(self) -> dict[str, Status | None]:
        return {n.name: n.status() for n in self.nodes}

    def vip_holders(self) -> list[str]:
        return [n.name for n in self.nodes if VIP in n.machine.ipv4_addresses()]

    def wait(
        self, pred: Callable[[dict[str, Status | None]], bool], timeout: float, what: str
    ) -> dict[str, Status | None]:
        deadline = time.monotonic() + timeout
        last: dict[str, Status | None] = {}
        while time.monotonic() < deadline:
            last = self.statuses()
            if pred(last):
                return last
            time.sleep(0.25)
        logs = "\n".join(f"--- {n.name}\n{n.log()[-3000:]}" for n in self.nodes)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}\n{self.table(last)}\n{logs}"
        )

    def converged(self, st: dict[str, Status | None]) -> bool:
        """Every machine runs its role and is ready; exactly ``servers`` servers."""
        roles = []
        for s in st.values():
            if s is None or not s["k3s"]["ready"]:
                return False
            roles.append(s["node"]["role"])
        want_servers = min(self.servers, sum(1 for n in self.nodes if not n.agent_only))
        return roles.count("server") == want_servers

    def table(self, st: Mapping[str, Status | None] | None = None) -> str:
        st = self.statuses() if st is None else st
        holders = set(self.vip_holders())
        rows = [f"{'MACHINE':<8} {'ADDRESS':<14} {'ROLE':<7} {'K3S':<9} {'VIP':<4} DECISION"]
        for n in self.nodes:
            s = st.get(n.name)
            if s is None:
                rows.append(f"{n.name:<8} {n.machine.address:<14} {'-':<7} {'down':<9}")
                continue
            k3s = "ready" if s["k3s"]["ready"] else s["k3s"]["state"]
            coord = " (coordinator)" if s.get("coordinator") == n.name else ""
            rows.append(
                f"{n.name:<8} {n.machine.address:<14} {s['node']['role']:<7} {k3s:<9} "
                f"{'yes' if n.name in holders else '':<4} {s.get('decision', '')[:60]}{coord}"
            )
        return "\n".join(rows)


def pids_named(machine: Machine, needle: bytes) -> list[int]:
    out = []
    for pid in machine.pids():
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")
