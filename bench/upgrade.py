"""A rolling k3s upgrade as a client sees it: k3snoded's rollout vs restarting k3s one by one.

    .venv/bin/python bench/upgrade.py [--json FILE]

One lab (tests/lab/upgrade_kit.py, as tests/lab/test_upgrade.py): n1..n3 may be servers
(servers.count 3), n4 and n5 are agent-only, PostgreSQL on the db machine, the stand-in k3s
installed from a mirror inside the lab, a client connecting to the registration address
(VIP:6443) every 20 ms (1 s timeout each) through both runs. Per run it prints:

- **longest gap**: the longest time between two successful connects (target: no longer than
  one VIP failover, 0.5 s; moonshot: 0, the VIP leaves each server before its k3s stops);
- **failed connects**, **total time**, and **k3s restarts per machine** (want exactly 1).

1. *k3snoded*: k3s.version changed in every machine's config and SIGHUP (the operator's whole
   procedure); timed until every machine runs the new release, ready, and the rollout is done.
2. *baseline*, in the same run on the same fleet: what a script that restarts k3s on each
   machine in turn does (k3s-ansible style, but kinder: it waits for k3s to be ready again
   before the next machine): SIGTERM to each machine's k3s, servers first, the VIP not moved
   beforehand. The supervisor starts k3s again; the VIP moves only once the holder's k3s is
   seen unready.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lab import dbs  # noqa: E402
from tests.lab.fleet import Fleet, Status  # noqa: E402
from tests.lab.netns import Lab  # noqa: E402
from tests.lab.probe import failures, longest_gap  # noqa: E402
from tests.lab.upgrade_kit import (  # noqa: E402
    NEW,
    OLD,
    Probe,
    Watch,
    rollout_of,
    set_version,
    upgrade_fleet,
    version_of,
)

PREFIX = "bupg"


def _all_on(version: str):  # type: ignore[no-untyped-def]
    def check(st: dict[str, Status | None]) -> bool:
        return all(s is not None and version_of(s) == version and s["k3s"]["ready"]
                   for s in st.values())  # fmt: skip

    return check


def _measure(fleet: Fleet, what: str, act: Any) -> dict[str, Any]:
    """Run ``act()`` with the probe and the pid watcher on; the figures of that run."""
    probe = Probe(fleet.lab)
    probe.start()
    watch = Watch(fleet)
    watch.start()
    time.sleep(2.0)
    t0 = time.monotonic()
    act()
    took = time.monotonic() - t0
    time.sleep(1.0)
    watch.stop()
    samples = probe.stop()
    return {
        "run": what,
        "longest_gap_s": round(longest_gap(samples, t0), 3),
        "failed_connects": failures(samples, t0),
        "total_s": round(took, 1),
        "k3s_restarts": watch.restarts(),
        "skew": len(watch.skew),
    }


def _rollout(fleet: Fleet) -> None:
    set_version(fleet, NEW)
    fleet.wait(_all_on(NEW), timeout=300, what=f"every machine on {NEW}")
    fleet.wait(
        lambda st: (rollout_of(fleet) or {}).get("state") == "done", timeout=60,
        what="the rollout done",
    )  # fmt: skip


def _naive(fleet: Fleet) -> None:
    """SIGTERM each machine's k3s in turn (servers first), waiting for it to be ready again."""
    st = fleet.statuses()
    order = sorted(st, key=lambda n: ((st[n] or {}).get("node", {}).get("role") != "server", n))
    for name in order:
        s = fleet.node(name).status()
        assert s is not None and s["k3s"]["pid"], name
        pid = int(s["k3s"]["pid"])
        os.kill(pid, signal.SIGTERM)  # a k3s this bench's fleet started

        def again(st: dict[str, Status | None], name: str = name, pid: int = pid) -> bool:
            s = st.get(name)
            return s is not None and s["k3s"]["pid"] not in (None, pid) and s["k3s"]["ready"]

        fleet.wait(again, timeout=120, what=f"k3s on {name} ready again")


def _line(r: dict[str, Any]) -> str:
    restarts = " ".join(f"{n}={c}" for n, c in sorted(r["k3s_restarts"].items()))
    return (
        f"{r['run']:<44} longest gap {r['longest_gap_s'] * 1000:7.0f} ms  failed connects "
        f"{r['failed_connects']:4d}  total {r['total_s']:6.1f} s  k3s restarts {restarts}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/upgrade.py needs root (network namespaces)", file=sys.stderr)
        return 1
    results: list[dict[str, Any]] = []
    with Lab(5, name=PREFIX, with_db=True, with_client=True) as lab:
        db = dbs.start(lab, "postgres")
        fleet = upgrade_fleet(lab, db, eligible=3, agents=2, servers=3)
        try:
            print(f"upgrade: 3 servers + 2 agents on PostgreSQL, {OLD} -> {NEW}, probe every 20 ms")
            results.append(
                _measure(fleet, f"k3snoded rollout {OLD} -> {NEW}", lambda: _rollout(fleet))
            )
            print(_line(results[-1]), flush=True)
            time.sleep(5.0)
            results.append(
                _measure(
                    fleet, "baseline: restart k3s one by one, VIP stays", lambda: _naive(fleet)
                )
            )
            print(_line(results[-1]), flush=True)
        finally:
            fleet.stop_all()
    ours, base = results
    gap_ratio = ours["longest_gap_s"] / base["longest_gap_s"] if base["longest_gap_s"] else 0.0
    print(
        f"ratio k3snoded/baseline: longest gap {gap_ratio:.2f}, failed connects "
        f"{ours['failed_connects']}/{base['failed_connects']}, "
        f"skew moments {ours['skew']} (k3snoded) {base['skew']} (baseline)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
