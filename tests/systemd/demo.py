"""``make demo-systemd`` (``make demo DEMO_ARGS=--systemd``): the main job as it runs in production.

Five Debian containers with systemd as PID 1 (3 server-capable, 2 agent-only) and PostgreSQL,
the .deb installed with apt-get, the daemons started by ``systemctl enable --now k3snoded``.
The table shows each machine's unit state (``systemctl is-active``), role, k3s pid and
readiness, VIP holder and decision. Then: ``systemctl restart k3snoded`` on the VIP holder
(k3s keeps its pid, the VIP stays), and a crash of the holder (its container killed): the VIP
moves and the coordinator replaces the server. Ctrl-C tears everything down.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lab import dbs
from tests.lab.netns import Lab
from tests.systemd import node as nodes
from tests.systemd.conftest import _build, _version
from tests.systemd.nspawn import SUITES, Booted, SystemdLab

Table = dict[str, dict[str, Any] | None]


def _table(machines: list[Booted], alive: set[str]) -> tuple[str, Table]:
    st: Table = {m.name: nodes.status(m) if m.name in alive else None for m in machines}
    rows = [f"{'MACHINE':<8} {'UNIT':<9} {'ROLE':<7} {'K3S PID':<8} {'K3S':<9} {'VIP':<4} DECISION"]
    for m in machines:
        s = st[m.name]
        if m.name not in alive:
            rows.append(f"{m.name:<8} {'(down)':<9}")
            continue
        unit = m.run(["systemctl", "is-active", "k3snoded"], check=False).stdout.strip()
        if s is None:
            rows.append(f"{m.name:<8} {unit:<9}")
            continue
        k3s = "ready" if s["k3s"]["ready"] else s["k3s"]["state"]
        vip = "yes" if nodes.holds_vip(m) else ""
        rows.append(
            f"{m.name:<8} {unit:<9} {s['node']['role']:<7} {s['k3s']['pid'] or '-'!s:<8} "
            f"{k3s:<9} {vip:<4} {s.get('decision', '')[:50]}"
        )
    return "\n".join(rows), st


def main(suite: str, servers: int, hold: float) -> int:
    if os.geteuid() != 0:
        print("the systemd demo needs root", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""

    def show(headline: str, machines: list[Booted], alive: set[str]) -> Table:
        text, st = _table(machines, alive)
        print(f"{clear}[{time.monotonic() - t0:6.1f} s] {headline}\n{text}\n", flush=True)
        return st

    def until(
        headline: str,
        ms: list[Booted],
        alive: set[str],
        pred: Callable[[Table], bool],
        limit: float,
    ) -> bool:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if pred(show(headline, ms, alive)):
                return True
            time.sleep(1)
        return False

    with tempfile.TemporaryDirectory(prefix="k3snoded-demo-") as tmp:
        print("building the .deb ...", flush=True)
        _build(Path(tmp))
        deb = sorted(Path(tmp).glob(f"k3snoded_{_version()}_*.deb"))[0]
        with Lab(5, with_db=True) as lab:
            db = dbs.start(lab, "postgres")
            print(f"booting 5 {suite} containers (systemd as PID 1) ...", flush=True)
            ms = SystemdLab(lab, SUITES[suite]).boot(lab.machines)
            alive = {m.name for m in ms}
            spec = nodes.FleetSpec(endpoint=db.endpoint, servers=servers)
            for i, m in enumerate(ms):
                nodes.setup_node(m, deb, spec, agent_only=i >= 3)
            for m in ms:
                nodes.enable_now(m, no_block=True)

            def formed(st: Table) -> bool:
                ready = [s for s in st.values() if s and s["k3s"]["ready"]]
                roles = [s["node"]["role"] for s in ready]
                return len(ready) == len(alive) and roles.count("server") == servers

            if not until("systemctl enable --now k3snoded on all 5", ms, alive, formed, 240):
                print("the fleet did not form within 240 s")
                return 1
            holder = next(m for m in ms if nodes.holds_vip(m))
            pid = nodes.k3s_pid(holder)
            print(f"systemctl restart k3snoded on {holder.name} (the VIP holder, k3s pid {pid})")
            holder.systemctl("restart", "k3snoded")
            show(f"restarted: k3s pid {nodes.k3s_pid(holder)}, VIP still on it", ms, alive)
            time.sleep(hold)
            print(f"crashing {holder.name}: link down, its container's PID 1 SIGKILLed")
            holder.machine.link_down()
            assert holder.leader is not None and holder.proc is not None
            os.kill(holder.leader, signal.SIGKILL)  # the kernel ends its whole pid namespace
            holder.proc.wait(timeout=30)
            alive.discard(holder.name)
            until(
                f"{holder.name} is gone: VIP moves, the coordinator replaces the server",
                ms,
                alive,
                lambda st: (
                    sum(
                        1
                        for s in st.values()
                        if s and s["node"]["role"] == "server" and s["k3s"]["ready"]
                    )
                    >= servers
                ),
                90,
            )
            show("final state", ms, alive)
            time.sleep(hold)
    print("demo finished; containers and lab torn down")
    return 0
