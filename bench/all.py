"""``make bench``: every benchmark, then one summary table of their headline lines.

The quick set (a few minutes) runs by default; ``--long`` (``make bench LONG=1``) adds the long
ones (the fleet at 1,000 members, cold starts of 20 and 30 machines, the fault suite, the VIP
under loss, the attacks, the systemd lab). A headline is a line in which a benchmark states a
figure beside its baseline or target (it contains "target", "baseline" or "ratio"), a
benchmark's own figure line (footprint, scale, VIP loss, lab, sim, ...), or a row of the fault
and attack tables; docs/performance.md holds the figures, their baselines, date and command.

    .venv/bin/python bench/all.py [--long] [--only footprint,startup]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")

# (name, argv after the interpreter, long)
BENCHES: list[tuple[str, list[str], bool]] = [
    ("footprint", ["bench/footprint.py", "--seconds", "30"], False),
    ("startup", ["bench/startup.py", "--runs", "5"], False),
    ("vip_failover", ["bench/vip_failover.py", "--runs", "3"], False),
    ("readyz_probe", ["bench/readyz_probe.py"], False),
    ("discovery", ["bench/discovery.py"], False),
    ("lab", ["bench/lab.py"], False),
    ("sim", ["bench/sim.py"], False),
    ("scale", ["bench/scale.py", "--sizes", "10,100,1000", "--baseline", "100"], True),
    ("formation", ["bench/formation.py", "--sizes", "5,20,30", "--runs", "3"], True),
    ("vip_loss", ["bench/vip_loss.py", "--runs", "3"], True),
    ("faults", ["bench/faults.py", "--runs", "2"], True),
    ("attacks", ["bench/attacks.py"], True),
    ("systemd_lab", ["bench/systemd_lab.py"], True),
]
HEADLINE_WORDS = ("target", "baseline", "ratio")
# Lines that carry a figure without one of those words: the footprint's own lines, the scale
# and VIP-loss summaries, the lab's and the simulator's, the readyz probe's and discovery's own
# figure, and the rows of the fault and attack tables (markdown).
HEADLINE_PREFIXES = (
    "scale ",
    "footprint ",
    "vip under ",
    "lab ",
    "sim:",
    "readyz probe, kept",
    "  k3snoded ",
    "| ",
)


def headlines(output: str) -> list[str]:
    return [
        line.strip()
        for line in output.splitlines()
        if (any(w in line.lower() for w in HEADLINE_WORDS) or line.startswith(HEADLINE_PREFIXES))
        and not line.startswith("| ---")
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--long", action="store_true", help="also run the long benchmarks")
    ap.add_argument("--only", default="", help="comma-separated names")
    args = ap.parse_args()
    only = {x for x in args.only.split(",") if x}
    rows: list[tuple[str, float, int, list[str]]] = []
    for name, argv, long in BENCHES:
        if (only and name not in only) or (long and not args.long and not only):
            continue
        print(f"== {name}: {' '.join(argv)}", flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(
            [PY, *argv], cwd=ROOT, capture_output=True, text=True, timeout=7200, check=False
        )
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
        rows.append((name, time.monotonic() - t0, proc.returncode, headlines(proc.stdout)))
    print("\n== summary")
    print(f"{'benchmark':13} | {'s':>6} | exit | headline")
    print(f"{'-' * 13}-+-{'-' * 6}-+------+{'-' * 60}")
    for name, seconds, code, lines in rows:
        first, *rest = lines or ["(no headline line)"]
        print(f"{name:13} | {seconds:6.0f} | {code:4d} | {first}")
        for line in rest:
            print(f"{'':13} | {'':6} | {'':4} | {line}")
    return 0 if all(code == 0 for _n, _s, code, _l in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
