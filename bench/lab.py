"""Lab bring-up and teardown time per machine (run as root: ``.venv/bin/python bench/lab.py``).

Prints, for N = 3, 10, 20 (and 30 with --all): the median over --runs runs, with min-max, of
``Lab(N).up()`` and ``Lab.down()`` (no processes running), e.g.

    lab up   N=10: 0.045 s (4.5 ms/machine; min-max 0.043-0.051, n=5)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab.netns import Lab


def measure(n: int, runs: int) -> tuple[list[float], list[float]]:
    ups: list[float] = []
    downs: list[float] = []
    for _ in range(runs):
        lab = Lab(n)
        t0 = time.perf_counter()
        lab.up()
        t1 = time.perf_counter()
        lab.down()
        t2 = time.perf_counter()
        ups.append(t1 - t0)
        downs.append(t2 - t1)
    return ups, downs


def line(what: str, n: int, samples: list[float]) -> str:
    med = statistics.median(samples)
    return (
        f"lab {what:<4} N={n:<2}: {med:.3f} s ({med / n * 1000:.1f} ms/machine; "
        f"min-max {min(samples):.3f}-{max(samples):.3f}, n={len(samples)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--all", action="store_true", help="also N=30")
    args = parser.parse_args()
    sizes = [3, 10, 20, 30] if args.all else [3, 10, 20]
    measure(3, 1)  # warm-up: imports, first namespace
    for n in sizes:
        ups, downs = measure(n, args.runs)
        print(line("up", n, ups))
        print(line("down", n, downs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
