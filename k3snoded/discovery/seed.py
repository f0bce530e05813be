"""Seed discovery: poll a list of peer-API URLs with signed ``GET /v1/peers`` (D3).

Each seed is polled by its own task: every ``interval`` seconds while it answers, with
exponential backoff (``interval`` doubling up to ``backoff_max``) while it does not. A failure is
logged once per seed and reason, recovery once. Whatever a verified answer lists is kept: a peer
that no seed lists any more stays known, because discovery never decides liveness (heartbeats
do).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from k3snoded.discovery.peer_api import Clock, base_url, fetch_peers
from k3snoded.errors import AuthenticationError
from k3snoded.model import Peer

log = logging.getLogger(__name__)


class SeedDiscovery:
    """Finds peers by asking seeds. ``start()`` once, ``peers()`` any time, ``close()`` at the end.

    ``local`` (this node) is left out of ``peers()`` and, when given, described to the seeds
    so they can tell the other nodes about it (``update(local)`` when it changes).
    ``refresh()`` asks every seed once and returns how many answered (also what the polling
    tasks do).
    """

    def __init__(
        self,
        seeds: Sequence[str],
        key: bytes,
        cluster: str,
        interval: float = 10.0,
        *,
        local: Peer | None = None,
        request_timeout: float = 3.0,
        backoff_max: float = 60.0,
        clock: Clock = time.time,
    ) -> None:
        self._seeds = [base_url(s) for s in seeds]  # ValueError now, not in a task later
        self._key = key
        self._cluster = cluster
        self._interval = interval
        self._local = local
        self._timeout = request_timeout
        self._backoff_max = max(backoff_max, interval)
        self._clock = clock
        self._peers: dict[str, Peer] = {}
        self._failing: dict[str, str] = {}  # seed -> reason last logged
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self.changed = asyncio.Event()  # set whenever peers() changes; consumers clear it

    @property
    def seeds(self) -> tuple[str, ...]:
        return tuple(self._seeds)

    def update(self, local: Peer) -> None:
        """What we tell the seeds about ourselves from the next poll on."""
        self._local = local

    def peers(self) -> dict[str, Peer]:
        """Every peer learned so far, by name (a copy)."""
        return dict(self._peers)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._tasks = [
            asyncio.create_task(self._poll(seed), name=f"seed {seed}") for seed in self._seeds
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._started = False

    async def __aenter__(self) -> SeedDiscovery:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def refresh(self) -> int:
        """Ask every seed once, concurrently; return how many answered with a verified list."""
        results = await asyncio.gather(*(self._ask(seed) for seed in self._seeds))
        return sum(results)

    async def _poll(self, seed: str) -> None:
        delay = self._interval
        while True:
            delay = self._interval if await self._ask(seed) else min(delay * 2, self._backoff_max)
            await asyncio.sleep(delay)

    async def _ask(self, seed: str) -> bool:
        if not self._started:
            raise RuntimeError("SeedDiscovery.start() was not called")
        try:
            learned = await fetch_peers(
                seed,
                self._key,
                self._cluster,
                request_timeout=self._timeout,
                clock=self._clock,
                local=self._local,
            )
        except AuthenticationError as exc:
            self._failed(seed, str(exc))
            return False
        except (TimeoutError, OSError) as exc:
            self._failed(seed, f"unreachable: {type(exc).__name__} {exc}".strip())
            return False
        if self._failing.pop(seed, None) is not None:
            log.info("seed %s answers again", seed)
        self._learn(seed, learned)
        return True

    def _failed(self, seed: str, reason: str) -> None:
        if self._failing.get(seed) == reason:
            log.debug("seed %s: %s", seed, reason)
            return
        self._failing[seed] = reason
        log.warning("seed %s: %s (logged once until it changes)", seed, reason)

    def _learn(self, seed: str, learned: list[Peer]) -> None:
        changed = False
        for peer in learned:
            if self._local is not None and peer.name == self._local.name:
                continue
            if self._peers.get(peer.name) != peer:
                if peer.name not in self._peers:
                    log.info("seed %s: found peer %s at %s", seed, peer.name, peer.addresses)
                self._peers[peer.name] = peer
                changed = True
        if changed:
            self.changed.set()
