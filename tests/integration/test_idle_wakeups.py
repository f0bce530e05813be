"""The daemon's periodic work shares wake-ups (k3snoded/ticks.py, docs/performance.md).

An idle daemon's CPU is the number of times its loop sleeps and wakes. Here the real
supervisor probes a real child's ``/ping`` over TLS (one kept-alive connection, as k3s
answers) at the daemon's 1 s interval, beside a 1 s tick on the grid (the daemon's
status/watchdog loop), and the loop's sleeps are counted: on the grid they are two a second
(the tick and the probe's request together, then the probe's answer); a probe that drifts
apart from the tick adds a third (3.2 a second before the supervisor's probe was on the grid).
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from pathlib import Path
from typing import Any

import pytest

from k3snoded.model import ChildState
from k3snoded.supervisor import Supervisor
from k3snoded.ticks import next_tick, sleep_to_grid
from tests.integration.children.kit import Tracker, child_spec, free_port, wait_status

WINDOW = 5.0  # seconds of idle counted


class _SleepCounter:
    """Counts the loop's blocking selects: each is one sleep and one wake-up of the thread."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._select = selector.select
        self.sleeps = 0

    def __call__(self, timeout: float | None = None) -> Any:
        if timeout is None or timeout > 0:
            self.sleeps += 1
        return self._select(timeout)


async def _tick() -> None:
    for _ in range(1000):  # bounded: the test cancels it after WINDOW
        await sleep_to_grid(1.0)


async def test_idle_probe_and_tick_share_wakeups(run_dir: Path, tracker: Tracker) -> None:
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    if selector is None:
        pytest.skip("not a selector event loop")
    sup = Supervisor("child", run_dir)  # the daemon's default probe interval, 1 s
    sup.want(child_spec(run_dir, "--keep-alive", port=free_port()))
    tracker.watch(sup)
    run = asyncio.create_task(sup.run())
    tick = asyncio.create_task(_tick())
    try:
        await wait_status(sup, lambda s: s.state is ChildState.READY and s.ready, timeout=30)
        await asyncio.sleep(next_tick(loop.time(), 1.0) + 0.5 - loop.time())  # settle
        counter = _SleepCounter(selector)
        selector.select = counter
        try:
            await asyncio.sleep(WINDOW)
        finally:
            del selector.select
        assert sup.status.ready, "the probe kept failing: nothing idle was measured"
        per_second = counter.sleeps / WINDOW
        # On the grid: 2 a second. Drifting ticks: 3. Bound between, with room for a stray
        # wake-up (a TLS record split in two) but not for a third timer each second.
        assert per_second <= 2.5, f"{counter.sleeps} sleeps in {WINDOW:.0f} s"
    finally:
        tick.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick
        await asyncio.wait_for(sup.shutdown(), 30)
        await run


def test_next_tick_is_on_the_grid_and_within_one_period() -> None:
    for now in (0.0, 0.05, 0.99999, 1.0, 12345.678, 1e6 + 0.3):
        for period in (0.1, 0.3, 1.0, 15.0):
            t = next_tick(now, period)
            assert now < t <= now + period + 1e-9
            assert abs(t / period - round(t / period)) < 1e-6
    # Ticks of 1 s fall on every tenth tick of 0.1 s (the VRRP master's advert timer).
    assert abs(next_tick(41.93, 1.0) - next_tick(41.95, 0.1)) < 1e-9
    with pytest.raises(ValueError):
        next_tick(1.0, 0)
