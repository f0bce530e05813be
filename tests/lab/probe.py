"""A client probing the registration address: a TCP connect to VIP:6443 every 20 ms (each
bounded by 1 s), run inside the lab's client machine, until a stop file appears or the time
limit. Writes ``[[start, end, ok], ...]`` (monotonic seconds) as JSON.

    python -m tests.lab.probe --out FILE --stop FILE --max 600

``longest_gap(samples)``: the longest time between two successive successful connects (by
their completion): how long the address did not answer, as a client saw it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from pathlib import Path

VIP = "198.18.0.100"
PORT = 6443
EVERY = 0.02

Sample = tuple[float, float, bool]


async def _probe(out: Path, stop: Path, max_seconds: float) -> None:
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        t0 = time.monotonic()
        ok = False
        try:
            _r, w = await asyncio.wait_for(asyncio.open_connection(VIP, PORT), 1.0)
            w.close()
            ok = True
        except (OSError, TimeoutError):
            pass
        samples.append((t0, time.monotonic(), ok))

    end = time.monotonic() + max_seconds
    checked = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now - checked > 0.2:
            checked = now
            if stop.exists():
                break
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(EVERY)
    if tasks:
        await asyncio.wait(tasks, timeout=2)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(samples)))
    tmp.replace(out)


def longest_gap(samples: list[Sample], start: float = 0.0, end: float = float("inf")) -> float:
    """The longest time between successive successful connects completed within [start, end]."""
    done = sorted(t1 for _t0, t1, ok in samples if ok and start <= t1 <= end)
    return max((b - a for a, b in itertools.pairwise(done)), default=float("inf"))


def failures(samples: list[Sample], start: float = 0.0, end: float = float("inf")) -> int:
    return sum(1 for t0, _t1, ok in samples if not ok and start <= t0 <= end)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stop", type=Path, required=True)
    ap.add_argument("--max", type=float, default=600.0)
    args = ap.parse_args()
    asyncio.run(_probe(args.out, args.stop, min(args.max, 1800.0)))


if __name__ == "__main__":
    main()
