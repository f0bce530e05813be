"""``make demo``: a k3snoded fleet in network namespaces, live.

3 server-capable machines and 2 agent-only machines (no datastore credentials) with PostgreSQL
on a sixth machine. All daemons start at once; a fleet table (role, k3s readiness, VIP holder,
each machine's last decision) is refreshed from every machine's status socket. Then the demo
crashes the VIP holder (every process in it killed, its link cut), shows the VIP moving and the
coordinator replacing the dead server, brings the machine back, and tears everything down.
Ctrl-C tears down at any point. ``K3S_BINARY=/path/to/k3s`` runs a real k3s instead of the
stand-in. ``--systemd [debian12|debian13]`` (``make demo-systemd``) runs the same fleet as
Debian containers with systemd as PID 1 and the .deb installed (tests/systemd/demo.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from tests.lab import dbs
from tests.lab.fleet import VIP, Fleet, Status
from tests.lab.netns import Lab


def _clear() -> str:
    return "\033[H\033[2J" if sys.stdout.isatty() else ""


class Show:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.t0 = time.monotonic()

    def frame(self, headline: str) -> dict[str, Status | None]:
        st = self.fleet.statuses()
        print(f"{_clear()}[{time.monotonic() - self.t0:6.1f} s] {headline}")
        print(self.fleet.table(st))
        print(flush=True)
        return st

    def until(
        self,
        headline: str,
        pred: Callable[[dict[str, Status | None]], bool],
        timeout: float,
        every: float = 1.0,
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.frame(headline)):
                return True
            time.sleep(every)
        return False


def _servers(st: dict[str, Status | None]) -> list[str]:
    return sorted(n for n, s in st.items() if s is not None and s["node"]["role"] == "server")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__)
    p.add_argument("--db", choices=["postgres", "mysql"], default="postgres")
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--no-failover", action="store_true", help="only form the fleet")
    p.add_argument("--hold", type=float, default=5.0, help="seconds to show the final state")
    p.add_argument(
        "--systemd",
        nargs="?",
        const="debian13",
        choices=["debian12", "debian13"],
        help="run on Debian containers with systemd as PID 1, the package installed",
    )
    args = p.parse_args(argv)
    if args.systemd:
        from tests.systemd import demo

        return demo.main(args.systemd, args.servers, args.hold)
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces)", file=sys.stderr)
        return 1
    fake_env = {}
    if os.environ.get("K3S_BINARY"):
        fake_env["K3S_REAL_BINARY"] = os.environ["K3S_BINARY"]
    with Lab(5, with_db=True) as lab:
        lab.up()
        print(
            f"lab {lab.prefix}: 5 machines on 198.18.0.0/24 inside namespaces; starting {args.db}"
        )
        db = dbs.start(lab, args.db)
        fleet = Fleet(
            lab, endpoint=db.endpoint, eligible=3, agents=2, servers=args.servers, fake_env=fake_env
        )
        show = Show(fleet)
        fleet.start_all()
        if not show.until("fleet forming: all 5 daemons started at once", fleet.converged, 120):
            print("the fleet did not converge within 120 s; see the logs under", fleet.workdir)
            return 1
        show.frame(f"fleet formed: {args.servers} servers, VIP {VIP} on {fleet.vip_holders()}")
        if args.no_failover:
            time.sleep(args.hold)
            return 0
        holder = fleet.vip_holders()[0]
        victim = fleet.node(holder)
        print(f"crashing {holder} (the VIP holder): SIGKILL every process in it, link down")
        t_crash = time.monotonic()
        for pid in victim.machine.pids():
            victim.machine.kill(pid)
        victim.machine.link_down()
        moved = show.until(
            f"{holder} crashed; waiting for the VIP to move",
            lambda st: bool([h for h in fleet.vip_holders() if h != holder]),
            10,
            every=0.1,
        )
        if moved:
            print(
                f"VIP moved to {[h for h in fleet.vip_holders() if h != holder]} "
                f"{time.monotonic() - t_crash:.2f} s after the crash"
            )
        healed = show.until(
            f"{holder} is gone; the coordinator replaces it once its heartbeat is stale",
            lambda st: (
                len([n for n in _servers(st) if n != holder and st[n] and st[n]["k3s"]["ready"]])  # type: ignore[index]
                >= args.servers
            ),
            60,
        )
        print("fleet healed" if healed else "fleet did not heal within 60 s")
        print(f"bringing {holder} back (link up, daemon restarted)")
        victim.machine.link_up()
        victim.start()
        show.until(
            f"{holder} rejoins and takes whatever role the fleet needs",
            fleet.converged,
            60,
        )
        show.frame("final state")
        time.sleep(args.hold)
    print("demo finished; lab torn down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
