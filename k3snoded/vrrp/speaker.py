"""The VRRPv3 speaker: the pure machine (``machine.py``) wired to the network and the kernel.

One asyncio task owns everything: the raw socket is read with ``loop.add_reader``, the single
timer is a loop timer handle (a master's on the daemon's time grid, ``ticks.py``), and the
address is reconciled by one task that compares the wanted state (from the machine) with the
interface and acts only on a difference. Events
are fed to the machine synchronously, so adverts and timers never wait behind netlink.

Health tracking belongs to the caller (the daemon probes the local k3s ``/ping``):
``set_healthy(False)`` makes a master send a priority-0 advert and release the address, and a
backup refuse to take over; ``set_priority(p)`` changes the advertised priority.

Authentication: with ``auth`` (an :class:`~k3snoded.vrrp.auth.AdvertAuth`), every advert
carries keepalived's ``auth_hmac`` trailer and adverts without a valid one are dropped, counted
by reason and logged once per source (``auth.py``). ``auth=None`` is the unauthenticated mode
for fleets that share the VRID with a keepalived without ``auth_hmac``.

Stale copies: at start the VIP is removed from the interface (a killed predecessor leaves it,
lab-findings §3). While Master, the VIP carries a kernel lifetime (``vip_lifetime``, 1 s by
default) refreshed at least every 0.25 s, so a SIGKILLed or frozen holder loses it within about
1.25 s instead of holding it for ever next to the new master. The refresh rides on the advert
timer (one netlink send, no ack awaited, no wake-up of its own) whenever the advert interval is
shorter than the refresh period; with longer intervals the reconcile task refreshes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from k3snoded.errors import VrrpError
from k3snoded.model import VrrpState
from k3snoded.ticks import next_tick
from k3snoded.vrrp import auth as vrrp_auth
from k3snoded.vrrp import machine, packet
from k3snoded.vrrp.garp import GarpSender
from k3snoded.vrrp.machine import MachineConfig, MachineState
from k3snoded.vrrp.netlink import AddressWriter, Netlink
from k3snoded.vrrp.transport import VrrpSocket

log = logging.getLogger(__name__)

RECONCILE_EVERY = 5.0  # seconds: re-check the address even when nothing changed
LIFETIME_REFRESH = 0.25  # seconds: how often a master refreshes the VIP's kernel lifetime
_MAX_READS_PER_WAKEUP = 64
_RELEASE = machine.SendAdvert(0)


@dataclass(frozen=True)
class SpeakerStatus:
    """A snapshot for status pages and metrics."""

    state: VrrpState
    priority: int
    effective_priority: int
    healthy: bool
    master: str | None  # the master's address as learned from adverts, ours when Master
    holds_vip: bool  # the VIP is on our interface right now (as last reconciled)
    transitions: int
    reason: str
    dropped: int  # received datagrams dropped (malformed, wrong TTL, foreign source, auth)
    authenticated: bool = False  # adverts are signed and must be (auth_hmac)
    auth_dropped: tuple[tuple[str, int], ...] = ()  # adverts refused by authentication, by reason


class _DropLog:
    """Log each kind of bad input (or failure) once at WARNING, then count it quietly."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.counts: dict[str, int] = {}

    def drop(self, kind: str, detail: str) -> None:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n == 1:
            log.warning("%s (%s): %s; repeats are counted quietly", self.what, kind, detail)
        else:
            log.debug("%s (%s, #%d): %s", self.what, kind, n, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class VrrpSpeaker:
    """One VRRP instance (one VRID, one VIP) on one interface."""

    def __init__(
        self,
        *,
        interface: str,
        vip: str,
        prefix: int,
        vrid: int,
        priority: int,
        advert_interval: float = 0.1,
        preempt: bool = False,
        unicast_peers: Sequence[str] = (),
        source_address: str | None = None,
        accept_mode: bool = True,
        garp_burst: int = 5,
        garp_repeat_after: float = 2.0,
        vip_lifetime: int | None = 1,
        resume: bool = False,
        auth: vrrp_auth.AdvertAuth | None = None,
    ) -> None:
        if not 1 <= vrid <= 255:
            raise VrrpError(f"VRID {vrid} is outside 1..255")
        _check_priority(priority)
        if not accept_mode:
            raise VrrpError("accept_mode=False is not supported: the API server listens on the VIP")
        try:
            self._cs = packet.interval_to_cs(advert_interval)
        except ValueError as exc:
            raise VrrpError(str(exc)) from exc
        self.interface = interface
        self.vip = IPv4Interface(f"{packet.parse_address(vip)}/{prefix}")
        self.vrid = vrid
        self.advert_interval = self._cs / 100.0
        self.preempt = preempt
        self.unicast_peers = tuple(packet.parse_address(p) for p in unicast_peers)
        self._source = packet.parse_address(source_address) if source_address else None
        self._garp_burst = garp_burst
        self._garp_repeat_after = garp_repeat_after
        if vip_lifetime is not None and vip_lifetime < 1:
            raise VrrpError("vip_lifetime must be at least 1 s (or None: permanent)")
        self._lifetime = vip_lifetime
        self._resume = resume  # start as master on the VIP the previous daemon handed over
        self._handover: tuple[int, int] | None = None  # (advert interval cs, VIP lifetime s)
        self._auth = auth
        self._auth_drops = vrrp_auth.AuthDrops()
        self._state = MachineState(priority=priority, master_adver_interval=self.advert_interval)
        self._config: MachineConfig | None = None
        self._sock: VrrpSocket | None = None
        self._garp: GarpSender | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._want_vip = False
        self._holds_vip = False
        self._garp_pending = False
        self._release_advert = False  # a priority-0 advert waiting for the VIP's removal
        self._garp_task: asyncio.Task[None] | None = None
        self._writer: AddressWriter | None = None
        self._refreshed = 0.0  # loop time of the last lifetime refresh (or add)
        # The advert timer refreshes the lifetime when it fires often enough; else the task.
        self._refresh_by_adverts = (
            vip_lifetime is not None and self.advert_interval < LIFETIME_REFRESH
        )
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._encoded: dict[tuple[int, int], list[bytes]] = {}  # (priority, cs) -> messages
        self._drops = _DropLog("dropping VRRP input")
        self._send_errors = _DropLog("VRRP I/O failed")
        self._mismatches = _DropLog("accepting a VRRP advert whose address list differs")

    # ---- public API -------------------------------------------------------------------------
    @property
    def status(self) -> SpeakerStatus:
        s = self._state
        return SpeakerStatus(
            state=s.state,
            priority=s.priority,
            effective_priority=s.effective_priority,
            healthy=s.healthy,
            master=str(s.master) if s.master else None,
            holds_vip=self._holds_vip,
            transitions=s.transitions,
            reason=s.reason,
            dropped=self._drops.total + self._auth_drops.total,
            authenticated=self._auth is not None,
            auth_dropped=tuple(sorted(self._auth_drops.counts.items())),
        )

    def set_priority(self, priority: int) -> None:
        """Change the base priority (1..254); a master advertises it at once."""
        _check_priority(priority)
        self._feed(machine.PriorityChanged(priority))

    def set_healthy(self, healthy: bool) -> None:
        """Stand down (False) or stand for election again (True). See the module docstring."""
        self._feed(machine.HealthChanged(healthy))

    async def stop(self) -> None:
        """Graceful stop: a master sends a priority-0 advert and removes the VIP. Waits for it."""
        self._stopping.set()
        self._wake.set()
        if self._running:
            await self._done.wait()

    async def hand_over(self, hold: float, lifetime: int) -> bool:
        """Stop for a daemon restart: a master keeps the VIP for ``lifetime`` s and advertises
        ``hold`` s as its interval (backups wait 3x that); anything else stops as ``stop()``.
        True when the address was kept (k3snoded/handover.py)."""
        self._handover = (packet.interval_to_cs(hold), lifetime)
        kept = self._state.state is VrrpState.MASTER and self._holds_vip
        await self.stop()
        return kept

    async def run(self) -> None:
        """Run until ``stop()`` or cancellation; leaves the VIP off the interface (unless
        handed over, see ``hand_over``)."""
        loop = asyncio.get_running_loop()
        self._running = True
        try:
            async with Netlink() as nl:
                await self._run(loop, nl)
        finally:
            self._done.set()

    # ---- the loop ---------------------------------------------------------------------------
    async def _run(self, loop: asyncio.AbstractEventLoop, nl: Netlink) -> None:
        info = await nl.interface(self.interface)
        source = self._source or info.primary
        if source is None or source == self.vip.ip:
            raise VrrpError(f"interface {self.interface} has no IPv4 address of its own")
        # A killed predecessor leaves the VIP behind (lab-findings §3): never start holding it.
        if not self._resume and await nl.ensure_absent(info.index, self.vip):
            log.warning("removed a stale copy of %s from %s at start", self.vip, self.interface)
        self._config = MachineConfig(
            address=source, advert_interval=self.advert_interval, preempt=self.preempt
        )
        self._encoded.clear()  # encoded for another source, if run before
        self._sock = VrrpSocket(
            self.interface, info.index, source, multicast=not self.unicast_peers, vrid=self.vrid
        )
        self._garp = GarpSender(
            self.interface,
            info.mac,
            self.vip.ip,
            burst=self._garp_burst,
            repeat_after=self._garp_repeat_after,
        )
        writer = AddressWriter(info.index, self.vip, self._lifetime)
        self._sock.open()
        try:
            writer.open()
            self._writer = writer
            self._garp.open()
            loop.add_reader(self._sock.fileno(), self._on_readable)
            log.info(
                "VRRP speaker on %s: VRID %d, VIP %s, priority %d, advert %.2f s, %s, "
                "source %s, %s",
                self.interface, self.vrid, self.vip, self._state.priority, self.advert_interval,
                f"unicast to {', '.join(map(str, self.unicast_peers))}"
                if self.unicast_peers else "multicast", source,
                "adverts authenticated (HMAC)" if self._auth else "UNAUTHENTICATED adverts",
            )  # fmt: skip
            self._feed(machine.Startup(self._resume))
            await self._reconcile_until_stopped(nl, writer, info.index)
        finally:
            handover = self._handover if self._state.state is VrrpState.MASTER else None
            if self._state.state is not VrrpState.INITIALIZE and handover is None:
                self._feed(machine.Shutdown())
            self._cancel_timer()
            with contextlib.suppress(Exception):
                loop.remove_reader(self._sock.fileno())
            await self._stop_garp()
            self._want_vip = False
            try:
                if handover is not None:  # keep it, bounded, and make backups wait for us
                    await nl.put(info.index, self.vip, handover[1])
                    for _ in range(3):  # one lost datagram must not end the hold
                        self._send_advert(self._state.effective_priority, handover[0])
                else:
                    await nl.ensure_absent(info.index, self.vip)
            finally:
                if handover is None:
                    self._send_release_advert()
                self._holds_vip = False
                self._writer = None
                self._sock.close()
                self._garp.close()
                writer.close()
                log.info("VRRP speaker on %s stopped", self.interface)

    async def _reconcile_until_stopped(
        self, nl: Netlink, writer: AddressWriter, index: int
    ) -> None:
        """Make the interface match the machine's wish; wake on change or every few seconds."""
        while not self._stopping.is_set():
            refreshing = (
                self._want_vip and self._lifetime is not None and not self._refresh_by_adverts
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), LIFETIME_REFRESH if refreshing else RECONCILE_EVERY
                )
            self._wake.clear()
            if self._stopping.is_set():
                return
            want = self._want_vip
            try:
                if want:
                    await writer.put()
                    self._refreshed = asyncio.get_running_loop().time()
                    if not self._holds_vip:
                        log.info("added %s to %s", self.vip, self.interface)
                    self._holds_vip = True
                    if self._garp_pending and self._want_vip:
                        self._garp_pending = False
                        # At most one announcement (burst, pause, burst) at a time.
                        if self._garp_task is None or self._garp_task.done():
                            self._garp_task = asyncio.create_task(self._garp_announce())
                else:
                    await self._stop_garp()
                    if await nl.ensure_absent(index, self.vip):
                        log.info("removed %s from %s", self.vip, self.interface)
                    self._holds_vip = False
                    self._send_release_advert()
            except VrrpError as exc:
                self._send_errors.drop("netlink", str(exc))
                await asyncio.sleep(0.05)
                self._wake.set()

    async def _garp_announce(self) -> None:
        assert self._garp is not None
        await self._garp.announce()

    async def _stop_garp(self) -> None:
        task, self._garp_task = self._garp_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- events in, actions out -------------------------------------------------------------
    def _feed(self, event: machine.Event) -> None:
        if self._config is None:  # not running yet: only remember priority and health
            self._state, _ = machine.step(
                MachineConfig(IPv4Address(0), self.advert_interval), self._state, event
            )
            return
        before = self._state
        self._state, actions = machine.step(self._config, self._state, event)
        if self._state.state is not before.state:
            log.info(
                "VRRP %s → %s: %s",
                before.state.value.upper(), self._state.state.value.upper(), self._state.reason,
            )  # fmt: skip
        if any(isinstance(a, machine.RemoveVip) for a in actions) and _RELEASE in actions:
            # Releasing: the priority-0 advert goes out once the VIP is gone, so the backup
            # that reacts to it never finds the address still here (no double holder).
            actions = tuple(a for a in actions if a != _RELEASE)
            self._release_advert = True
        for action in actions:
            self._perform(action)

    def _perform(self, action: machine.Action) -> None:
        match action:
            case machine.SendAdvert(priority=p):
                self._send_advert(p)
                if p and self._refresh_by_adverts:
                    self._refresh_lifetime()
            case machine.AddVip():
                self._want_vip = True
                self._wake.set()
            case machine.RemoveVip():
                self._want_vip = False
                self._garp_pending = False
                self._wake.set()
            case machine.SendGarp():
                self._garp_pending = True
                self._wake.set()
            case machine.SetTimer(delay=d):
                self._cancel_timer()
                loop = asyncio.get_running_loop()
                if self._state.state is VrrpState.MASTER:
                    # The advert timer, on the daemon's time grid (ticks.py): the next advert
                    # is at most one interval away, and the daemon's 1 s ticks ride on it.
                    self._timer = loop.call_at(next_tick(loop.time(), d), self._on_timer)
                else:  # a backup's master-down or skew timer: never shortened
                    self._timer = loop.call_later(d, self._on_timer)
            case machine.CancelTimer():
                self._cancel_timer()

    def _refresh_lifetime(self) -> None:
        """With an advert, while holding the VIP: renew its kernel lifetime when due."""
        writer = self._writer
        if writer is None or not (self._holds_vip and self._want_vip):
            return
        now = asyncio.get_running_loop().time()
        if now - self._refreshed < LIFETIME_REFRESH:
            return
        self._refreshed = now
        try:
            writer.refresh()
        except VrrpError as exc:
            self._send_errors.drop("netlink", str(exc))
            self._wake.set()  # the reconcile task adds it again and reports

    def _send_release_advert(self) -> None:
        if self._release_advert:
            self._release_advert = False
            self._send_advert(0)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._feed(machine.TimerFired())

    def _send_advert(self, priority: int, cs: int | None = None) -> None:
        assert self._sock is not None
        targets = self.unicast_peers or (packet.VRRP_MULTICAST_GROUP,)
        source = self._sock.source
        key = (priority, cs or self._cs)
        messages = self._encoded.get(key)
        if messages is None:  # a master sends the same message ten times a second: encode once
            advert = packet.Advertisement(self.vrid, priority, key[1], (self.vip.ip,))
            messages = [packet.encode(advert, source, dst) for dst in targets]
            if len(self._encoded) >= 8:  # bounded: priorities change rarely
                self._encoded.clear()
            self._encoded[key] = messages
        if self._auth is not None:  # one trailer for every copy: the checksum is not covered
            trailer = self._auth.trailer(messages[0], source)
            messages = [m + trailer for m in messages]
        for dst, message in zip(targets, messages, strict=True):
            try:
                self._sock.send(message, dst)
            except OSError as exc:
                self._send_errors.drop("send", f"advert to {dst}: {exc}")

    def _on_readable(self) -> None:
        assert self._sock is not None
        for _ in range(_MAX_READS_PER_WAKEUP):
            try:
                data = self._sock.receive()
            except OSError as exc:  # a pending socket error (e.g. ENETDOWN) is reported once
                self._send_errors.drop("receive", str(exc))
                return
            if data is None:
                return
            self._on_datagram(data)

    def _on_datagram(self, data: bytes) -> None:
        assert self._sock is not None and self._config is not None
        try:
            dgram = packet.parse_ipv4(data)
            if dgram.protocol != packet.IPPROTO_VRRP:
                return
            if dgram.source == self._sock.source:
                return  # our own advert, looped back
            if len(dgram.payload) > 1 and dgram.payload[1] != self.vrid:
                return  # another router's VRID on the same segment: silently discarded (RFC 7.1)
            if dgram.ttl != packet.VRRP_TTL:
                self._drops.drop("ttl", f"TTL {dgram.ttl} from {dgram.source}, must be 255")
                return
            if self.unicast_peers and dgram.source not in self.unicast_peers:
                self._drops.drop("source", f"advert from {dgram.source}, not a configured peer")
                return
            message, trailer = (
                vrrp_auth.split(dgram.payload) if self._auth else (dgram.payload, None)
            )
            advert = packet.decode(message, dgram.source, dgram.destination)
        except packet.MalformedAdvert as exc:
            self._drops.drop("malformed", str(exc))
            return
        if advert.vrid != self.vrid:
            return  # another router's VRID on the same segment: silently discarded (RFC 7.1)
        if self._auth is not None:
            try:
                skew = self._auth.verify(message, trailer, dgram.source)
            except vrrp_auth.AuthRejected as exc:
                self._auth_drops.refused(exc, dgram.source)
                return
            self._auth_drops.accepted(skew, self._auth.window, dgram.source)
        if advert.addresses != (self.vip.ip,):
            # RFC 5798 7.1: a mismatch is logged, the advert is still processed.
            self._mismatches.drop(
                "addresses", f"{dgram.source} advertises {list(map(str, advert.addresses))}"
            )
        self._feed(machine.AdvertReceived(advert.priority, dgram.source, advert.interval))


def _check_priority(priority: int) -> None:
    if not 1 <= priority <= 254:
        raise VrrpError(f"priority {priority} is outside 1..254 (255 is the address owner's)")
