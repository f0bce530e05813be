"""Simulator throughput: simulated machine-hours per second of wall time (make bench).

Runs a batch of seeds of the fleet simulator (tests/sim) in one process and prints the rate,
beside a baseline measured in the same run: the same wall time spent idling a plain asyncio
loop through the same number of timer wake-ups, i.e. what the virtual clock costs against
the event loop's own bookkeeping. The figure is what decides how many seeds fit in CI's time.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.sim.runner import run_seed

SEEDS = range(100_000, 100_200)


async def _timers(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def main() -> int:
    began = time.perf_counter()
    machine_seconds = 0.0
    steps = 0
    failures = 0
    for seed in SEEDS:
        result, _ = run_seed(seed)
        machine_seconds += result.machine_seconds
        steps += result.lines
        failures += result.violation is not None
    wall = time.perf_counter() - began
    rate = machine_seconds / 3600 / wall
    base_began = time.perf_counter()
    asyncio.run(_timers(200_000))
    per_wakeup = (time.perf_counter() - base_began) / 200_000
    per_seed = wall / len(SEEDS)
    print(
        f"sim: {len(SEEDS)} seeds in {wall:.1f} s, {machine_seconds / 3600:.1f} simulated "
        f"machine-hours: {rate:.2f} machine-hours/s ({per_seed * 1000:.0f} ms a seed, "
        f"{failures} invariant violations)"
    )
    print(
        f"baseline: real time runs 1 machine-second per machine per second: the simulator is "
        f"{machine_seconds / wall:.0f}x real time"
    )
    print(
        f"baseline: a bare asyncio wake-up costs {per_wakeup * 1e6:.1f} us; a seed costs "
        f"{per_seed / per_wakeup:.0f} wake-ups' worth (ratio), 2,000 seeds on 2 workers "
        f"~{2000 * per_seed / 2:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
