"""CPU from exec to the first heartbeat, beside the interpreter's own start in the same run.

One machine of a lab runs k3snoded as a server-capable member with the VIP on (its config as
the lab fleet writes it: PostgreSQL in the lab's db machine, mDNS, the peer API). A watcher in
the db machine polls the member table every 5 ms and prints the monotonic time (one clock for
every namespace) at which the member's row appears; the daemon's CPU (utime + stime, from
/proc, sampled every 2 ms) at that moment is the figure. The baseline is the CPU of
``python -I -c pass`` (the interpreter alone) in the same lab. Target (issue 14): ≤ 0.25
CPU-seconds.

    .venv/bin/python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab import dbs
from tests.lab.fleet import PYTHON, Fleet
from tests.lab.netns import Lab

TICK = os.sysconf("SC_CLK_TCK")
WATCH = """
import time, sys
conn = {connect}
conn.autocommit = True
for _ in range(12000):
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM k3snoded_members WHERE name = 'n1'")
            if cur.fetchall():
                print(time.monotonic(), flush=True)
                break
    except Exception:
        conn.rollback()
    time.sleep(0.005)
"""


def cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def interpreter_cpu(lab: Lab) -> float:
    m = lab.machines[0]
    code = "import os;t=os.times();print(t.user+t.system)"
    out = m.run([str(PYTHON), "-I", "-c", code]).stdout
    return float(out.strip())


def one_run() -> tuple[float, float, float]:
    """(CPU seconds at the first heartbeat, wall seconds to it, the interpreter's CPU)."""
    with Lab(1, with_db=True) as lab:
        lab.up()
        db = dbs.start(lab, "postgres")
        fleet = Fleet(lab, endpoint=db.endpoint, eligible=1, agents=0, servers=1, vip=True)
        node = fleet.nodes[0]
        assert lab.db is not None
        watch = WATCH.format(connect=db.python_connect_source())
        watcher = lab.db.spawn([str(PYTHON), "-c", watch], stdout=subprocess.PIPE)
        time.sleep(1.0)  # the watcher connected
        t0 = time.monotonic()
        node.start()
        assert node.proc is not None
        samples: list[tuple[float, float]] = []
        deadline = t0 + 60
        while watcher.poll() is None and time.monotonic() < deadline:
            used = cpu(node.proc.pid)
            if used is not None:
                samples.append((time.monotonic(), used))
            time.sleep(0.002)
        assert watcher.stdout is not None
        seen = float(watcher.stdout.read().decode().strip() or "nan")
        at = next((c for t, c in samples if t >= seen), samples[-1][1])
        base = interpreter_cpu(lab)
        fleet.stop_all()
        return at, seen - t0, base


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    runs = [one_run() for _ in range(args.runs)]
    for i, (c, wall, base) in enumerate(runs, 1):
        print(f"run {i}: {c:.2f} CPU-s at the first heartbeat ({wall:.2f} s wall); "
              f"interpreter alone {base:.3f} CPU-s")  # fmt: skip
    c = statistics.median(r[0] for r in runs)
    wall = statistics.median(r[1] for r in runs)
    base = statistics.median(r[2] for r in runs)
    print(
        f"start-up exec -> first heartbeat, median of {args.runs}: {c:.2f} CPU-seconds "
        f"({wall:.2f} s wall); baseline python -I -c pass {base:.3f} CPU-s "
        f"(ratio {c / base:.1f}x); "
        f"target <= 0.25 CPU-s: {'met' if c <= 0.25 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
