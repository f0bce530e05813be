"""Everything this node has learned about its peers from discovery (mDNS and seeds), plus the
signed peer API it answers itself. Discovery never decides liveness (D3): heartbeats in the
datastore do.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from k3snoded.config import Config
from k3snoded.discovery.peer_api import PeerApi
from k3snoded.discovery.seed import SeedDiscovery
from k3snoded.discovery.signing import derive_key
from k3snoded.httpd import Router
from k3snoded.model import Peer, Role
from k3snoded.ticks import next_tick
from k3snoded.tokens import read_token

if TYPE_CHECKING:
    from k3snoded.discovery.mdns import MdnsDiscovery

log = logging.getLogger("k3snoded.peers")

REANNOUNCE_CHECK = 1.0  # seconds between checks whether our announcement must change (on the
# daemon's time grid, ticks.py); a poke() looks at once
RETRY_FIRST = 1.0  # seconds before mDNS is tried again after it could not start; doubles
RETRY_MAX = 30.0


class PeerBook:
    def __init__(self, cfg: Config, *, local: Callable[[], Peer]) -> None:
        self.cfg = cfg
        self._local = local
        # A machine with only the agent token verifies nothing peers sign: a random key makes
        # every signature it sees fail, and config.py turns mDNS and the seeds off for it.
        self.keyless = cfg.cluster.agent_token_file is not None
        if self.keyless:
            key = secrets.token_bytes(32)
        else:
            key = derive_key(read_token(cfg.cluster.token_file), cfg.cluster.name)
        self._key = key
        self.api = PeerApi(key, cfg.cluster.name, self.peers, local)
        self.seeds: SeedDiscovery | None = None
        self.mdns: MdnsDiscovery | None = None
        self._announced: Peer | None = None
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """What this machine announces may have changed (its role, the CA hash it vouches
        for): look now, not at the next check. An agent of a cold start waits for the first
        server's announcement of the CA hash; a second of lag here was a second of its start."""
        self._poked.set()

    @property
    def key(self) -> bytes:
        """The cluster key (from the token and the cluster name) that signs what peers say."""
        return self._key

    def install(self, router: Router) -> None:
        if not self.keyless:
            self.api.install(router)

    async def run(self) -> None:
        self._announced = self._local()
        if self.cfg.discovery.seeds:
            self.seeds = SeedDiscovery(
                self.cfg.discovery.seeds, self._key, self.cfg.cluster.name, local=self._announced
            )
            await self.seeds.start()
        want_mdns = self.cfg.discovery.mdns and bool(self.cfg.node.address)
        retry_at, delay, failing = 0.0, RETRY_FIRST, False
        loop = asyncio.get_running_loop()
        while True:
            if want_mdns and self.mdns is None and loop.time() >= retry_at:
                try:
                    await self._start_mdns()
                    if failing:
                        log.info("mDNS discovery started on %s", self.cfg.node.address)
                    failing = False
                except OSError as err:
                    # The address may not be on the interface yet (DHCP, a slow network at
                    # boot): discovery is retried, it does not end the daemon.
                    if not failing:
                        log.warning(
                            "mDNS discovery cannot start on %s yet (%s); retrying every <= %.0f s",
                            self.cfg.node.address,
                            err,
                            RETRY_MAX,
                        )
                    failing = True
                    retry_at = loop.time() + delay
                    delay = min(delay * 2, RETRY_MAX)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_tick(loop.time(), REANNOUNCE_CHECK)):
                    await self._poked.wait()
            self._poked.clear()
            now = self._local()
            if now == self._announced:
                continue
            self._announced = now
            if self.mdns is not None:
                await self.mdns.update(now)
            if self.seeds is not None:
                self.seeds.update(now)

    async def _start_mdns(self) -> None:
        from k3snoded.discovery.mdns import MdnsDiscovery

        mdns = MdnsDiscovery(
            key=self._key, cluster=self.cfg.cluster.name, address=self.cfg.node.address
        )
        await mdns.start(self._announced or self._local())
        self.mdns = mdns

    async def close(self) -> None:
        if self.mdns is not None:
            await self.mdns.close()
            self.mdns = None
        if self.seeds is not None:
            await self.seeds.close()

    def peers(self) -> list[Peer]:
        found: dict[str, Peer] = {}
        if self.seeds is not None:
            found.update(self.seeds.peers())
        if self.mdns is not None:
            found.update(self.mdns.peers())
        found.pop(self.cfg.node.name, None)
        return sorted(found.values(), key=lambda p: p.name)

    def registration(self) -> str | None:
        """The registration address most peers announce (servers first), if any."""
        votes: collections.Counter[str] = collections.Counter()
        for p in self.peers():
            if p.registration:
                votes[p.registration] += 2 if p.role is Role.SERVER else 1
        return votes.most_common(1)[0][0] if votes else None

    def announced_pins(self) -> list[tuple[str, bool, bool]]:
        """(CA hash, agent token, announced by a server) of every verified peer (capin.vote)."""
        return [(p.ca_hash or "", p.agent_token, p.role is Role.SERVER) for p in self.peers()]

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "name": p.name,
                "address": p.addresses[0] if p.addresses else "",
                "role": p.role.value,
                "registration": p.registration,
                "source": "discovery",
            }
            for p in self.peers()
        ]
