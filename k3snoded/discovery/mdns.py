"""mDNS discovery: announce this node and find the others on ``_k3snoded._tcp.local.`` (D3).

Each node registers ``<node>-<hash8>._k3snoded._tcp.local.`` (``hash8`` from cluster, node name
and address, so two machines never want the same instance name) with a signed TXT record
(``announcement`` fields plus ``ts`` and ``sig``), and browses the same type. Every Added or
Updated instance is verified from zeroconf's cache at once, or resolved first (a bounded number
at a time); other-cluster, unsigned, forged, stale, malformed and misnamed announcements are
refused (logged once per instance and reason, at most a few lines a minute in all).

Speed. zeroconf's default registration probes the name first (150-250 ms random wait, then three
probes 500 ms apart): 1.17 s before anyone hears of the node (lab-findings §2). k3snoded
registers with ``cooperating_responders=True``, which skips probing, so the first announcement
goes out at once. RFC 6762 §8 probing protects a *shared* name; here the instance and host names
carry a per-machine hash, so a conflict means the same node name on two machines with the same
address, a configuration error k3snoded reports itself: a verified announcement of our own node
name from another instance is logged as an error and never taken as a peer.

Freshness. The record is re-signed every ``resign_interval`` (60 s) and receivers accept a
timestamp up to ``max_age`` (300 s) away from their clock, which covers the re-sign period, a
late joiner reading a cached record, and modest clock skew. Replaying a captured announcement
within the window only repeats what that node really said a few minutes ago; an announcement
older than one already accepted from the same node is ignored, even after the node left, so a
replay cannot roll a peer back (``mdns_peers.py`` holds these rules).

Goodbyes. python-zeroconf honours a TTL-0 record from anyone, so an unverified goodbye removes
nothing by itself: ``close()`` first announces a signed record saying it leaves (``b=1``), which
removes the peer at once, then sends the usual TTL-0 goodbye. A goodbye without that signed
record (a forgery, or an older k3snoded) is confirmed by querying the instance: a peer that
still answers with a verified record stays. Liveness is not decided here: a hard-killed node
sends no goodbye, stays in ``peers()``, and the daemon's heartbeats tell it is dead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf._dns import DNSPointer, DNSService
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from k3snoded.discovery.announcement import (
    LEAVING_FIELD,
    decode_txt,
    encode_txt,
    peer_from_fields,
    peer_to_fields,
)
from k3snoded.discovery.mdns_peers import (
    SERVICE_TYPE,
    AnnouncedPeers,
    Outcome,
    instance_matches,
    instance_name,
)
from k3snoded.discovery.signing import TS_FIELD, sign_record, verify_record
from k3snoded.errors import AuthenticationError
from k3snoded.model import Peer
from k3snoded.ratelimit import OncePerKey

log = logging.getLogger(__name__)

__all__ = ["SERVICE_TYPE", "MdnsDiscovery", "instance_name", "parse_announcement"]

RESIGN_INTERVAL = 60.0
MAX_AGE = 300.0
RESOLVE_TIMEOUT_MS = 3000
MAX_RESOLVING = 64  # instances resolved over the network at once; more wait for re-announcements
CONFIRM_DELAY = 1.0  # seconds after an unsigned goodbye before asking the instance
CONFIRM_ATTEMPTS = 2

Clock = Callable[[], float]
PeerCallback = Callable[[Peer], None]
RejectCallback = Callable[[str, str], None]


def parse_announcement(
    key: bytes,
    cluster: str,
    properties: Mapping[bytes, bytes | None],
    now: float,
    *,
    max_age: float = MAX_AGE,
) -> tuple[Peer, float]:
    """The peer a TXT record announces, and its signing time.

    Raises AuthenticationError (unsigned, forged, stale, other cluster) or ValueError (malformed).
    """
    peer, ts, _ = parse_signed(key, cluster, properties, now, max_age=max_age)
    return peer, ts


def parse_signed(
    key: bytes,
    cluster: str,
    properties: Mapping[bytes, bytes | None],
    now: float,
    *,
    max_age: float = MAX_AGE,
) -> tuple[Peer, float, bool]:
    """Like :func:`parse_announcement`, plus whether the record is the node's signed goodbye."""
    fields = verify_record(key, decode_txt(properties), now, max_age=max_age, cluster=cluster)
    return peer_from_fields(fields), float(fields[TS_FIELD]), fields.get(LEAVING_FIELD) == "1"


class MdnsDiscovery:
    """Announces ``local`` and collects verified peers. One instance per node.

    ``start(local)`` binds zeroconf to ``address`` (IPv4 only), registers and browses;
    ``update(local)`` re-announces at once when what we say changed; ``peers()`` returns the
    verified peers by node name; ``close()`` says goodbye (signed, then TTL 0). ``on_peer`` is
    called with every new or changed peer, ``on_reject`` with (instance name, reason) the first
    time an instance is refused for a reason; both run on the event loop and must not block.
    ``rejected`` maps the last refused instance names (at most 1024) to their reason.
    """

    def __init__(
        self,
        key: bytes,
        cluster: str,
        address: str,
        *,
        resign_interval: float = RESIGN_INTERVAL,
        max_age: float = MAX_AGE,
        clock: Clock = time.time,
        on_peer: PeerCallback | None = None,
        on_reject: RejectCallback | None = None,
    ) -> None:
        if resign_interval >= max_age:
            raise ValueError("resign_interval must be shorter than max_age")
        self._key = key
        self._cluster = cluster
        self._address = address
        self._resign_interval = resign_interval
        self._max_age = max_age
        self._clock = clock
        self._on_peer = on_peer
        self._on_reject = on_reject
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._local: Peer | None = None
        self._book = AnnouncedPeers()
        self._refusals = OncePerKey(log, "refused mDNS announcements")
        self._resolving: set[str] = set()
        self._again: set[str] = set()
        self._confirming: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._resigner: asyncio.Task[None] | None = None
        self.overflow = 0  # instances not resolved because MAX_RESOLVING were pending
        self.changed = asyncio.Event()  # set whenever peers() changes; consumers clear it

    @property
    def instance(self) -> str | None:
        return self._info.name if self._info is not None else None

    @property
    def rejected(self) -> Mapping[str, str]:
        """Instance name -> reason of its last refusal (bounded, oldest forgotten)."""
        return self._book.rejected

    def peers(self) -> dict[str, Peer]:
        """Verified peers by node name (a copy). Shrinks only on a signed or confirmed goodbye."""
        return dict(self._book.peers)

    async def start(self, local: Peer) -> None:
        if self._aiozc is not None:
            raise RuntimeError("MdnsDiscovery already started")
        self._check_local(local)
        self._local = local
        self._aiozc = AsyncZeroconf(interfaces=[self._address], ip_version=IPVersion.V4Only)
        try:
            info = self._service_info(local)
            # No probing (see the module docstring): the first announcement leaves at once.
            await self._aiozc.async_register_service(info, cooperating_responders=True)
        except BaseException:
            await self._aiozc.async_close()
            self._aiozc = None
            raise
        self._info = info
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change]
        )
        self._resigner = asyncio.create_task(self._resign_loop(), name="mdns re-sign")
        log.info("announcing %s on %s as %s", local.name, self._address, self._info.name)

    async def update(self, local: Peer) -> None:
        """Re-announce if anything we say changed (role, registration address, addresses...)."""
        self._check_local(local)
        if self._aiozc is None or self._local is None:
            raise RuntimeError("MdnsDiscovery.start() was not called")
        if local.name != self._local.name:
            raise ValueError("a node cannot change its name while announcing")
        if local == self._local:
            return
        self._local = local
        await self._announce()

    async def close(self) -> None:
        """Say goodbye (signed, so peers drop us at once; then TTL 0) and stop browsing."""
        if self._resigner is not None:
            self._resigner.cancel()
            await asyncio.gather(self._resigner, return_exceptions=True)
            self._resigner = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._aiozc is not None:
            if self._info is not None:
                await self._announce(leaving=True)
                await (await self._aiozc.async_unregister_service(self._info))
            await self._aiozc.async_close()
            self._aiozc = None

    async def __aenter__(self) -> MdnsDiscovery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- announcing --------------------------------------------------------------------------
    def _check_local(self, local: Peer) -> None:
        if local.cluster != self._cluster:
            raise ValueError(f"local peer is of cluster {local.cluster!r}, not {self._cluster!r}")
        if self._address not in local.addresses:
            # Receivers check the instance name against the signed addresses.
            raise ValueError(f"local peer must announce the address {self._address} it binds")

    def _service_info(self, local: Peer, *, leaving: bool = False) -> AsyncServiceInfo:
        name = instance_name(local.name, self._cluster, self._address)
        fields = peer_to_fields(local)
        if leaving:
            fields[LEAVING_FIELD] = "1"
        record = sign_record(self._key, fields, self._clock())
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=local.api_port,
            properties=encode_txt(record),
            server=name.removesuffix(SERVICE_TYPE) + "local.",
            parsed_addresses=[self._address],
        )

    async def _announce(self, *, leaving: bool = False) -> None:
        if self._aiozc is None or self._local is None:
            return
        self._info = self._service_info(self._local, leaving=leaving)
        await self._aiozc.async_update_service(self._info)

    async def _resign_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resign_interval)
            await self._announce()

    # ---- browsing ----------------------------------------------------------------------------
    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if name == self.instance:
            return
        if state_change is ServiceStateChange.Removed:
            self._unverified_goodbye(name)
            return
        # The browser calls us once the packet's records are in the cache: verify them now, so
        # a signed goodbye is read before the TTL-0 records that follow it remove it.
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if self._aiozc is not None and info.load_from_cache(self._aiozc.zeroconf):
            self._verify(name, info)
            return
        if name in self._resolving:
            self._again.add(name)
            return
        if len(self._resolving) >= MAX_RESOLVING:
            self.overflow += 1  # a real peer is heard again at its next re-announcement
            self._refusals(("overflow",), "more than %d mDNS instances to resolve; skipping %s",
                           MAX_RESOLVING, name)  # fmt: skip
            return
        self._resolving.add(name)
        self._spawn(self._resolve_until_settled(name), f"resolve {name}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve_until_settled(self, name: str) -> None:
        try:
            while True:
                self._again.discard(name)
                await self._resolve(name)
                if name not in self._again:
                    return
        finally:
            self._resolving.discard(name)

    async def _resolve(self, name: str) -> bool:
        """Ask the network for ``name``; True if it answered with a record we accepted."""
        if self._aiozc is None:
            return False
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._aiozc.zeroconf, RESOLVE_TIMEOUT_MS):
            log.debug("%s did not resolve within %d ms", name, RESOLVE_TIMEOUT_MS)
            return False
        return self._verify(name, info)

    def _verify(self, name: str, info: AsyncServiceInfo) -> bool:
        try:
            peer, ts, leaving = parse_signed(
                self._key, self._cluster, info.properties, self._clock(), max_age=self._max_age
            )
        except (AuthenticationError, ValueError) as exc:
            self._reject(name, str(exc))
            return False
        return self._accept(name, peer, ts, leaving=leaving)

    def _accept(self, name: str, peer: Peer, ts: float, *, leaving: bool = False) -> bool:
        if not instance_matches(name, peer):
            self._reject(name, f"instance name does not match node {peer.name!r}'s signed fields")
            return False
        if self._local is not None and peer.name == self._local.name:
            self._reject(name, f"announces our own node name {peer.name!r}: duplicate node name")
            return False
        previous = [i for i, n in self._book.instances.items() if n == peer.name and i != name]
        if previous and not leaving:
            self._refusals((name, "duplicate"), "%s and %s both announce node %s",
                           previous[0], name, peer.name)  # fmt: skip
        outcome = self._book.accept(name, peer, ts, leaving=leaving)
        if outcome is Outcome.OLDER:
            log.debug("ignoring an older announcement of %s from %s", peer.name, name)
            return False
        if outcome is Outcome.LEFT:
            log.info("peer %s said goodbye (signed)", peer.name)
            self.changed.set()
            return False
        if outcome is Outcome.UNCHANGED:
            return not leaving
        if outcome is Outcome.NEW:
            log.info("found peer %s (%s) at %s", peer.name, peer.role.value, peer.addresses)
        self.changed.set()
        if self._on_peer is not None:
            self._on_peer(peer)
        return True

    def _evict(self, name: str) -> None:
        """Drop a refused instance's PTR, SRV and TXT from zeroconf's cache (and its refresh
        query), so a flood of forged names does not stay in memory for their TTLs. A real
        peer refused for a passing reason is heard again at its next announcement."""
        if self._aiozc is None:
            return
        cache = self._aiozc.zeroconf.cache
        ptrs = [
            r
            for r in cache.async_entries_with_name(SERVICE_TYPE)
            if isinstance(r, DNSPointer) and r.alias == name
        ]
        own = cache.async_entries_with_name(name)
        cache.async_remove_records([*own, *ptrs])
        for server in {r.server for r in own if isinstance(r, DNSService)}:
            if not cache.async_entries_with_server(server):  # no other instance uses the host
                cache.async_remove_records(cache.async_entries_with_name(server))
        if self._browser is not None:
            for ptr in ptrs:
                self._browser.query_scheduler.cancel_ptr_refresh(ptr)

    def _unverified_goodbye(self, name: str) -> None:
        """A TTL-0 goodbye: anyone can send one. Confirm before dropping a verified peer."""
        self._book.forget_rejected(name)
        if self._book.node_of(name) is None or name in self._confirming:
            return
        self._confirming.add(name)
        self._spawn(self._confirm(name), f"confirm goodbye {name}")

    async def _confirm(self, name: str) -> None:
        try:
            await asyncio.sleep(CONFIRM_DELAY)
            for _ in range(CONFIRM_ATTEMPTS):
                if self._book.node_of(name) is None:  # it left (signed) meanwhile
                    return
                if await self._resolve(name):
                    log.debug("%s still answers: the goodbye for it was not its own", name)
                    return
            node = self._book.confirm_gone(name)
            if node is not None:
                log.info("peer %s said goodbye (unsigned; it no longer answers)", node)
                self.changed.set()
        finally:
            self._confirming.discard(name)

    def _reject(self, name: str, reason: str) -> None:
        self._book.reject(name, reason)
        self._evict(name)
        # the key drops the volatile parts of stale-age messages ("stale record: 412 s old...")
        key = (name, reason.split(":", 1)[0])
        new = self._refusals(key, "refused announcement %s: %s", name, reason)
        if new and self._on_reject is not None:
            self._on_reject(name, reason)
