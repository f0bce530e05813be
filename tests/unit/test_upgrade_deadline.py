"""The upgrade's waits (k3snoded/upgrader.py ``Deadline``) on the simulator's virtual clock."""

from __future__ import annotations

import asyncio

from k3snoded.upgrader import POLL, Deadline
from tests.sim.vloop import VirtualLoop


def _run(coro_fn: object) -> list[bool]:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(coro_fn())  # type: ignore[operator]
    finally:
        loop.close()


def test_a_deadline_passes_when_its_time_ran_while_looking() -> None:
    async def wait() -> list[bool]:
        d = Deadline(10.0)
        seen = []
        for _ in range(int(10.0 / POLL) + 2):
            seen.append(d.passed())
            await asyncio.sleep(POLL)
        return seen

    seen = _run(wait)
    assert not any(seen[:-3]) and seen[-1]


def test_a_frozen_daemon_does_not_count_the_time_it_did_not_run() -> None:
    """Seed 774 (generation 6): a machine stopped (SIGSTOP) for 36.8 s while its k3s stopped
    for the upgrade; thawed, the 30 s stop deadline had passed on CLOCK_MONOTONIC although
    neither the daemon nor k3s had run meanwhile, and the upgrade was judged failed."""

    async def wait() -> list[bool]:
        d = Deadline(10.0)
        seen = [d.passed()]
        await asyncio.sleep(3.0 * POLL)
        seen.append(d.passed())
        await asyncio.sleep(36.8)  # one look, then nothing for 36.8 s: frozen
        seen.append(d.passed())
        for _ in range(int(10.0 / POLL) + 2):
            await asyncio.sleep(POLL)
            seen.append(d.passed())
        return seen

    seen = _run(wait)
    assert seen[:3] == [False, False, False]  # thawed: most of its 10 s still left
    assert seen[-1]  # and it does pass once that time ran while looking


def test_restart_gives_the_whole_time_again() -> None:
    async def wait() -> list[bool]:
        d = Deadline(2.0)
        await asyncio.sleep(1.5)
        d.restart()
        await asyncio.sleep(1.5)
        first = d.passed()
        await asyncio.sleep(1.0)
        return [first, d.passed()]

    assert _run(wait) == [False, True]
