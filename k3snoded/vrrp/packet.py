"""VRRP version 3 advertisements for IPv4 (RFC 5798 section 5): encode, decode, validate.

Pure functions over bytes. The checksum covers the IPv4 pseudo-header (source, destination,
zero, protocol 112, VRRP length) and the VRRP message, as section 5.2.8 says. Everything a
receiver must reject raises :class:`MalformedAdvert`, a :class:`~k3snoded.errors.VrrpError`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from k3snoded.errors import VrrpError

IPPROTO_VRRP = 112
VRRP_VERSION = 3
TYPE_ADVERTISEMENT = 1
VRRP_MULTICAST_GROUP = IPv4Address("224.0.0.18")
VRRP_TTL = 255
MAX_ADVER_INT_CS = 0x0FFF  # 12 bits, centiseconds: at most 40.95 s

_HEADER = struct.Struct("!BBBBHH")  # ver/type, vrid, priority, count, rsvd/maxadv, checksum
_IPV4_MIN_HEADER = 20


class MalformedAdvert(VrrpError):
    """A received datagram is not a valid VRRPv3 IPv4 advertisement; drop it."""


@dataclass(frozen=True)
class Advertisement:
    """One VRRPv3 advertisement, as sent or as received and validated."""

    vrid: int
    priority: int
    max_adver_int_cs: int
    addresses: tuple[IPv4Address, ...]

    @property
    def interval(self) -> float:
        """The advertisement interval in seconds."""
        return self.max_adver_int_cs / 100.0


@dataclass(frozen=True)
class IPv4Datagram:
    """The parts of an IPv4 header a VRRP receiver checks, plus the payload."""

    source: IPv4Address
    destination: IPv4Address
    ttl: int
    protocol: int
    payload: bytes


def interval_to_cs(seconds: float) -> int:
    """Seconds → centiseconds for Max Adver Int; raises ValueError outside 0.01..40.95 s."""
    cs = round(seconds * 100)
    if not 1 <= cs <= MAX_ADVER_INT_CS:
        raise ValueError(f"advert interval {seconds} s is outside 0.01..40.95 s")
    return cs


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(source: IPv4Address, destination: IPv4Address, length: int) -> bytes:
    return source.packed + destination.packed + struct.pack("!BBH", 0, IPPROTO_VRRP, length)


def encode(advert: Advertisement, source: IPv4Address, destination: IPv4Address) -> bytes:
    """The VRRP message (no IP header) for ``advert`` sent from ``source`` to ``destination``."""
    if not 1 <= advert.vrid <= 255:
        raise ValueError(f"VRID {advert.vrid} is outside 1..255")
    if not 0 <= advert.priority <= 255:
        raise ValueError(f"priority {advert.priority} is outside 0..255")
    if not 1 <= advert.max_adver_int_cs <= MAX_ADVER_INT_CS:
        raise ValueError(f"max advert interval {advert.max_adver_int_cs} cs is out of range")
    if not 1 <= len(advert.addresses) <= 255:
        raise ValueError("an advertisement carries 1..255 addresses")
    body = b"".join(a.packed for a in advert.addresses)
    header = _HEADER.pack(
        (VRRP_VERSION << 4) | TYPE_ADVERTISEMENT,
        advert.vrid,
        advert.priority,
        len(advert.addresses),
        advert.max_adver_int_cs & MAX_ADVER_INT_CS,
        0,
    )
    message = header + body
    csum = checksum(_pseudo_header(source, destination, len(message)) + message)
    return message[:6] + struct.pack("!H", csum) + message[8:]


def decode(message: bytes, source: IPv4Address, destination: IPv4Address) -> Advertisement:
    """Validate and decode a VRRP message (no IP header) received from ``source``.

    Checks length, version, type, address count against the length, and the checksum over
    the pseudo-header. Raises :class:`MalformedAdvert` with a short reason otherwise.
    """
    if len(message) < _HEADER.size + 4:
        raise MalformedAdvert(f"too short ({len(message)} bytes)")
    ver_type, vrid, priority, count, rsvd_adv, _ = _HEADER.unpack_from(message)
    if ver_type >> 4 != VRRP_VERSION:
        raise MalformedAdvert(f"version {ver_type >> 4}, expected 3")
    if ver_type & 0x0F != TYPE_ADVERTISEMENT:
        raise MalformedAdvert(f"type {ver_type & 0x0F}, expected 1 (advertisement)")
    if count == 0:
        raise MalformedAdvert("no addresses")
    if len(message) != _HEADER.size + 4 * count:
        raise MalformedAdvert(f"length {len(message)} does not match {count} IPv4 address(es)")
    if checksum(_pseudo_header(source, destination, len(message)) + message) != 0:
        raise MalformedAdvert("bad checksum")
    if vrid == 0:
        raise MalformedAdvert("VRID 0")
    max_adver = rsvd_adv & MAX_ADVER_INT_CS
    if max_adver == 0:
        raise MalformedAdvert("max advert interval 0")
    addresses = tuple(IPv4Address(message[i : i + 4]) for i in range(_HEADER.size, len(message), 4))
    return Advertisement(vrid, priority, max_adver, addresses)


def parse_ipv4(datagram: bytes) -> IPv4Datagram:
    """Split a datagram read from a raw IPv4 socket into the header fields VRRP checks."""
    if len(datagram) < _IPV4_MIN_HEADER or datagram[0] >> 4 != 4:
        raise MalformedAdvert("not an IPv4 datagram")
    header_len = (datagram[0] & 0x0F) * 4
    total_len = struct.unpack_from("!H", datagram, 2)[0]
    if header_len < _IPV4_MIN_HEADER or len(datagram) < header_len:
        raise MalformedAdvert("truncated IPv4 header")
    end = min(len(datagram), total_len) if total_len >= header_len else len(datagram)
    return IPv4Datagram(
        source=IPv4Address(datagram[12:16]),
        destination=IPv4Address(datagram[16:20]),
        ttl=datagram[8],
        protocol=datagram[9],
        payload=datagram[header_len:end],
    )


def parse_address(text: str) -> IPv4Address:
    """An IPv4 address from config or the command line; VrrpError for anything else."""
    try:
        return IPv4Address(text)
    except ipaddress.AddressValueError as exc:
        raise VrrpError(f"{text!r} is not an IPv4 address (IPv6 VRRP is not supported)") from exc
