"""The raw IPPROTO_VRRP socket: multicast group membership, TTL 255, sending and receiving.

One non-blocking socket per speaker, bound to the interface (SO_BINDTODEVICE) so only its
traffic is seen. Outgoing adverts carry TTL 255 and TOS "internetwork control" like
keepalived's; the source address and the outgoing interface are fixed per packet with
IP_PKTINFO, so adding the VIP never changes the source of our adverts. The socket is *not*
bound to an address: a raw socket bound to one only receives datagrams sent to it, which would
hide the multicast group.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address
from typing import Any

from k3snoded.errors import VrrpError
from k3snoded.vrrp.packet import IPPROTO_VRRP, VRRP_MULTICAST_GROUP, VRRP_TTL

_IPTOS_PREC_INTERNETCONTROL = 0xC0
_MAX_DATAGRAM = 2048
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # linux/in.h; missing from typeshed


def _in_pktinfo(ifindex: int, source: IPv4Address) -> bytes:
    """struct in_pktinfo {int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr;}."""
    return struct.pack("@i4s4s", ifindex, source.packed, b"\0\0\0\0")


_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # asm-generic/socket.h


def _vrid_filter(vrid: int) -> tuple[bytes, Any]:
    """A classic BPF program that passes only VRRP messages of ``vrid`` (their second byte,
    after the IPv4 header) and its ``struct sock_fprog``. Other routers' adverts on the
    segment (10 a second for a keepalived at 0.1 s) are then dropped by the kernel instead
    of waking the daemon to be discarded (RFC 5798 7.1 discards them silently anyway)."""
    import ctypes

    program = [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): X = IPv4 header length
        (0x50, 0, 0, 1),  # ldb [x+1]: A = the VRRP message's VRID
        (0x15, 0, 1, vrid),  # jeq #vrid, accept, drop
        (0x06, 0, 0, 0xFFFF),  # ret #65535: accept
        (0x06, 0, 0, 0),  # ret #0: drop
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in program))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(code))
    return fprog, code  # the buffer must outlive the setsockopt that copies it


def _ip_mreqn(group: IPv4Address, source: IPv4Address, ifindex: int) -> bytes:
    """struct ip_mreqn {in_addr imr_multiaddr; in_addr imr_address; int imr_ifindex;}."""
    return struct.pack("@4s4si", group.packed, source.packed, ifindex)


class VrrpSocket:
    """Send and receive VRRP datagrams on one interface."""

    def __init__(
        self,
        interface: str,
        ifindex: int,
        source: IPv4Address,
        *,
        multicast: bool,
        vrid: int | None = None,
    ) -> None:
        self.interface = interface
        self.ifindex = ifindex
        self.source = source
        self.multicast = multicast
        self.vrid = vrid  # receive only this VRID's messages (a kernel filter); None: all
        self._sock: socket.socket | None = None
        self._pktinfo = [(socket.IPPROTO_IP, _IP_PKTINFO, _in_pktinfo(ifindex, source))]

    def open(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_VRRP)
        except OSError as exc:
            raise VrrpError(f"cannot open a raw VRRP socket (needs CAP_NET_RAW): {exc}") from exc
        try:
            if self.vrid is not None:  # before anything is received
                fprog, _code = _vrid_filter(self.vrid)
                sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode() + b"\0"
            )
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, VRRP_TTL)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, _IPTOS_PREC_INTERNETCONTROL)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, VRRP_TTL)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            mreqn = _ip_mreqn(VRRP_MULTICAST_GROUP, self.source, self.ifindex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            if self.multicast:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise VrrpError(f"cannot set up the VRRP socket on {self.interface}: {exc}") from exc
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def fileno(self) -> int:
        if self._sock is None:
            raise VrrpError("VRRP socket is not open")
        return self._sock.fileno()

    def send(self, message: bytes, destination: IPv4Address) -> None:
        """Send one VRRP message; OSError (link down, no route) is the caller's to log."""
        if self._sock is None:
            raise VrrpError("VRRP socket is not open")
        self._sock.sendmsg([message], self._pktinfo, 0, (str(destination), 0))

    def receive(self) -> bytes | None:
        """One datagram (with its IPv4 header), or None when nothing is waiting."""
        if self._sock is None:
            return None
        try:
            return self._sock.recv(_MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return None
