"""One time grid for the daemon's periodic work, so its timers share wake-ups.

An idle daemon's CPU is the number of times its loop wakes, not the work done at each wake
(docs/performance.md, "Footprint"): every wake-up of the process costs a few hundred µs on a
small machine, the work itself tens. Periodic work that sleeps "period seconds from now"
drifts apart and wakes the loop once per timer; work that sleeps until the next multiple of its
period on the loop clock fires at the same instants as every other timer on the grid (1 s ticks
fire together, and together with every tenth advert of a 0.1 s VRRP master), in one loop
iteration. A timer on the grid never fires later than its period: the next multiple of
``period`` after ``now`` is at most ``period`` away.
"""

from __future__ import annotations

import asyncio
import math


def next_tick(now: float, period: float) -> float:
    """The first multiple of ``period`` strictly after ``now`` (both in loop-clock seconds)."""
    if period <= 0:
        raise ValueError(f"a grid period must be positive, not {period!r}")
    return (math.floor(now / period) + 1) * period


async def sleep_until(when: float) -> None:
    """Sleep until loop time ``when`` exactly (``asyncio.sleep`` adds its delay to a later
    reading of the clock, which puts the timer beside the grid instead of on it)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    handle = loop.call_at(when, _wake, done)
    try:
        await done
    finally:
        handle.cancel()


async def sleep_to_grid(period: float) -> None:
    """Sleep until the next multiple of ``period`` on the loop clock."""
    await sleep_until(next_tick(asyncio.get_running_loop().time(), period))


def _wake(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


__all__ = ["next_tick", "sleep_to_grid", "sleep_until"]
