"""Gratuitous ARP for the VIP over an AF_PACKET socket.

An ARP request "who-has VIP tell VIP" from the interface's MAC to the broadcast address: every
neighbour with an entry for the VIP updates it to our MAC (Linux does this even with the
default ``arp_accept=0``, lab-findings §3). Like keepalived, a takeover sends a burst (5 by
default), then a second burst after a delay (keepalived's ``garp_master_delay``, 5 s; ours
defaults to 2 s), so a neighbour that missed the first burst is corrected soon.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from ipaddress import IPv4Address

from k3snoded.errors import VrrpError

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
_BROADCAST = b"\xff" * 6


def frame(mac: bytes, address: IPv4Address) -> bytes:
    """The Ethernet frame of one gratuitous ARP request for ``address`` from ``mac``."""
    if len(mac) != 6:
        raise ValueError(f"MAC must be 6 bytes, not {len(mac)}")
    ether = _BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, request
    arp += mac + address.packed + b"\x00" * 6 + address.packed
    return ether + arp


class GarpSender:
    """Sends gratuitous ARP bursts on one interface. ``announce`` is cancellable at any await."""

    def __init__(
        self,
        interface: str,
        mac: bytes,
        address: IPv4Address,
        *,
        burst: int = 5,
        repeat_after: float = 2.0,
    ) -> None:
        self._frame = frame(mac, address)
        self._interface = interface
        self._burst = burst
        self._repeat_after = repeat_after
        self._sock: socket.socket | None = None
        self.sent = 0

    def open(self) -> None:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            sock.bind((self._interface, ETH_P_ARP))
        except OSError as exc:
            raise VrrpError(f"cannot open an ARP socket on {self._interface}: {exc}") from exc
        sock.setblocking(False)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send_burst(self) -> int:
        """Send one burst now (non-blocking); returns how many frames went out."""
        if self._sock is None:
            return 0
        sent = 0
        for _ in range(self._burst):
            try:
                self._sock.send(self._frame)
                sent += 1
            except OSError as exc:  # link down, queue full: the repeat burst may succeed
                log.debug("gratuitous ARP on %s failed: %s", self._interface, exc)
                break
        self.sent += sent
        return sent

    async def announce(self) -> None:
        """A burst now and another after ``repeat_after`` seconds. Cancel to stop early."""
        self.send_burst()
        if self._repeat_after > 0:
            await asyncio.sleep(self._repeat_after)
            self.send_burst()
