"""The daemon's periodic work on one time grid (k3snoded/ticks.py, docs/performance.md), and
the one timer that must stay off it: the supervisor's readiness probe.

The apiserver answers /readyz's etcd check from a verdict it keeps for 1 s (its health check
is rate-limited to one per etcd-readycheck-timeout/2; the stand-in's ``Health.FRESH``). Probes
exactly 1 s apart, on the grid, were given the previous second's verdict about half the time:
a lost datastore was seen a second late on one server and the VIP moved to it while its k3s
was failing too (tests/lab/test_healing.py::test_datastore_outage_changes_nothing_and_recovers
failed 3 times in 4). Each probe now starts a full interval after the previous one ended.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from k3snoded.model import ChildState
from k3snoded.process import HttpProbe
from k3snoded.supervisor import Supervisor
from k3snoded.ticks import next_tick
from tests.integration.children.kit import Tracker, child_spec, free_port, wait_status

WINDOW = 5.0  # seconds of idle counted


async def test_probes_are_more_than_an_interval_apart(
    run_dir: Path, tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[float] = []
    real = HttpProbe.status

    async def timed(self: HttpProbe, seconds: float) -> int | None:
        starts.append(time.monotonic())
        return await real(self, seconds)

    monkeypatch.setattr(HttpProbe, "status", timed)
    sup = Supervisor("child", run_dir)  # the daemon's default probe interval, 1 s
    sup.want(child_spec(run_dir, "--keep-alive", port=free_port()))
    tracker.watch(sup)
    run = asyncio.create_task(sup.run())
    try:
        await wait_status(sup, lambda s: s.state is ChildState.READY and s.ready, timeout=30)
        starts.clear()
        await asyncio.sleep(WINDOW)
        assert sup.status.ready, "the probe kept failing"
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert len(gaps) >= 3, starts
        # More than the apiserver's 1 s: every probe gets a fresh verdict. Not much more:
        # the probe still runs every second.
        assert min(gaps) > 1.0, gaps
        assert max(gaps) < 1.5, gaps
    finally:
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
