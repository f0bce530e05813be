"""mDNS discovery: announce this node and find the others on ``_k3snoded._tcp.local.`` (D3).

Each node registers ``<node>-<hash8>._k3snoded._tcp.local.`` (``hash8`` from cluster, node name
and address, so two machines never want the same instance name) with a signed TXT record
(``announcement`` fields plus ``ts`` and ``sig``), and browses the same type. Every Added or
Updated instance is resolved and its TXT verified; other-cluster, unsigned, forged, stale and
malformed announcements are refused (logged once per instance and reason, then quietly).

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
older than one already accepted from the same node is ignored, so a replay cannot roll a peer
back.

Liveness is not decided here: a peer is dropped only on its goodbye (``close()`` sends one); a
hard-killed node stays in ``peers()`` and the daemon's heartbeats tell it is dead.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from k3snoded.discovery.announcement import decode_txt, encode_txt, peer_from_fields, peer_to_fields
from k3snoded.discovery.signing import TS_FIELD, sign_record, verify_record
from k3snoded.errors import AuthenticationError
from k3snoded.model import Peer

log = logging.getLogger(__name__)

SERVICE_TYPE = "_k3snoded._tcp.local."
RESIGN_INTERVAL = 60.0
MAX_AGE = 300.0
RESOLVE_TIMEOUT_MS = 3000
_LABEL_MAX = 63
_LOGGED_MAX = 1024

Clock = Callable[[], float]
PeerCallback = Callable[[Peer], None]
RejectCallback = Callable[[str, str], None]


def instance_name(node: str, cluster: str, address: str) -> str:
    """``<node>-<hash8>._k3snoded._tcp.local.``: unique per (cluster, node, address)."""
    digest = hashlib.sha256(f"{cluster}\0{node}\0{address}".encode()).hexdigest()[:8]
    label = f"{node[: _LABEL_MAX - 9]}-{digest}"
    return f"{label}.{SERVICE_TYPE}"


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
    fields = verify_record(key, decode_txt(properties), now, max_age=max_age, cluster=cluster)
    return peer_from_fields(fields), float(fields[TS_FIELD])


class MdnsDiscovery:
    """Announces ``local`` and collects verified peers. One instance per node.

    ``start(local)`` binds zeroconf to ``address`` (IPv4 only), registers and browses;
    ``update(local)`` re-announces at once when what we say changed; ``peers()`` returns the
    verified peers by node name; ``close()`` says goodbye. ``on_peer`` is called with every new
    or changed peer, ``on_reject`` with (instance name, reason) the first time an instance is
    refused for a reason; both run on the event loop and must not block.
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
        self._peers: dict[str, Peer] = {}
        self._last_ts: dict[str, float] = {}  # node name -> ts of the record accepted last
        self._instances: dict[str, str] = {}  # instance name -> node name
        self._logged: set[tuple[str, str]] = set()
        self._resolving: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._resigner: asyncio.Task[None] | None = None
        self.rejected: dict[str, str] = {}  # instance name -> last reason
        self.changed = asyncio.Event()  # set whenever peers() changes; consumers clear it

    @property
    def instance(self) -> str | None:
        return self._info.name if self._info is not None else None

    def peers(self) -> dict[str, Peer]:
        """Verified peers by node name (a copy). Never shrinks except on a goodbye."""
        return dict(self._peers)

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
        """Say goodbye (peers drop us at once) and stop browsing."""
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

    def _service_info(self, local: Peer) -> AsyncServiceInfo:
        name = instance_name(local.name, self._cluster, self._address)
        record = sign_record(self._key, peer_to_fields(local), self._clock())
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=local.api_port,
            properties=encode_txt(record),
            server=name.removesuffix(SERVICE_TYPE) + "local.",
            parsed_addresses=[self._address],
        )

    async def _announce(self) -> None:
        if self._aiozc is None or self._local is None:
            return
        self._info = self._service_info(self._local)
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
            self._goodbye(name)
            return
        if name in self._resolving:
            self._again.add(name)
            return
        self._resolving.add(name)
        task = asyncio.create_task(self._resolve_until_settled(name), name=f"resolve {name}")
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

    async def _resolve(self, name: str) -> None:
        if self._aiozc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._aiozc.zeroconf, RESOLVE_TIMEOUT_MS):
            log.debug("%s did not resolve within %d ms", name, RESOLVE_TIMEOUT_MS)
            return
        try:
            peer, ts = parse_announcement(
                self._key, self._cluster, info.properties, self._clock(), max_age=self._max_age
            )
        except (AuthenticationError, ValueError) as exc:
            self._reject(name, str(exc))
            return
        self._accept(name, peer, ts)

    def _accept(self, name: str, peer: Peer, ts: float) -> None:
        if self._local is not None and peer.name == self._local.name:
            self._reject(name, f"announces our own node name {peer.name!r}: duplicate node name")
            return
        if ts < self._last_ts.get(peer.name, 0.0):
            log.debug("ignoring an older announcement of %s from %s", peer.name, name)
            return
        previous_instance = next((i for i, n in self._instances.items() if n == peer.name), None)
        if previous_instance not in (None, name):
            self._log_once(
                name, "duplicate", "%s and %s both announce node %s", previous_instance, name
            )
            self._instances.pop(previous_instance or "", None)
        self._instances[name] = peer.name
        self._last_ts[peer.name] = ts
        self.rejected.pop(name, None)
        if self._peers.get(peer.name) == peer:
            return
        if peer.name not in self._peers:
            log.info("found peer %s (%s) at %s", peer.name, peer.role.value, peer.addresses)
        self._peers[peer.name] = peer
        self.changed.set()
        if self._on_peer is not None:
            self._on_peer(peer)

    def _goodbye(self, name: str) -> None:
        node = self._instances.pop(name, None)
        self.rejected.pop(name, None)
        if node is None:
            return
        log.info("peer %s said goodbye", node)
        self._peers.pop(node, None)
        self._last_ts.pop(node, None)
        self.changed.set()

    def _reject(self, name: str, reason: str) -> None:
        self.rejected[name] = reason
        logged = self._log_once(name, reason, "refused announcement %s: %s", name, reason)
        if logged and self._on_reject is not None:
            self._on_reject(name, reason)

    def _log_once(self, name: str, reason: str, message: str, *args: object) -> bool:
        # the key drops the volatile parts of stale-age messages ("stale record: 412 s old...")
        key = (name, reason.split(":", 1)[0])
        if key in self._logged:
            log.debug(message, *args)
            return False
        if len(self._logged) >= _LOGGED_MAX:
            self._logged.clear()
        self._logged.add(key)
        log.warning(message + " (logged once)", *args)
        return True
