"""The fault suite as a benchmark (issue 7): each fault K times on a fresh lab, a table of
fault | runs | time to recover (median, min-max) | invariant violations.

Every run: a new lab (4 machines + db), PostgreSQL, 3 server-capable + 1 agent-only machine,
servers.count 2, VIP on; the fleet formed; the fault injected with the invariants sampled
(tests/lab/faults_suite.py); the lab torn down.

    .venv/bin/python bench/faults.py [--runs 3] [--only kill-vip-holder,partition-server]
        [--db postgres|mysql] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab import faults_suite
from tests.lab.netns import Lab


def one(name: str, kind: Any) -> faults_suite.Outcome:
    with Lab(4, with_db=True) as lab:
        fleet, db = faults_suite.formed_fleet(lab, kind)
        return faults_suite.run(name, fleet, db)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--db", default="postgres", choices=["postgres", "mysql"])
    ap.add_argument("--json", default="", help="also write every outcome here")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(faults_suite.SCENARIOS)
    unknown = [n for n in names if n not in faults_suite.SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {', '.join(faults_suite.SCENARIOS)}")
    results: dict[str, list[faults_suite.Outcome]] = {}
    failures: dict[str, list[str]] = {}
    for name in names:
        for i in range(max(1, args.runs)):
            t = time.monotonic()
            try:
                out = one(name, args.db)
            except AssertionError as exc:  # not recovered within the scenario's bound
                failures.setdefault(name, []).append(str(exc).splitlines()[0])
                print(f"{name} run {i + 1}: NOT RECOVERED: {str(exc).splitlines()[0]}", flush=True)
                continue
            results.setdefault(name, []).append(out)
            print(
                f"{name} run {i + 1}: recovered in {out.recovery:.2f} s, "
                f"{len(out.violations)} violations {out.violations} {out.notes} "
                f"({time.monotonic() - t:.0f} s)",
                flush=True,
            )
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
        f"({platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores), "
        f"db {args.db}\n"
    )
    print("| fault | runs | time to recover: median (min-max) | invariant violations |")
    print("| --- | --- | --- | --- |")
    for name in names:
        outs = results.get(name, [])
        fails = failures.get(name, [])
        viol = sum(len(o.violations) for o in outs)
        runs = f"{len(outs)}" + (f" (+{len(fails)} not recovered)" if fails else "")
        print(f"| {name} | {runs} | {faults_suite.summary([o.recovery for o in outs])} | {viol} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {n: [o.__dict__ for o in outs] for n, outs in results.items()}
                | {"failures": failures},
                indent=1,
                default=str,
            )
        )
    bad = failures or any(o.violations for outs in results.values() for o in outs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
