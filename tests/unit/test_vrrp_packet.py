"""VRRPv3 codec: round trip, checksum over the pseudo-header, and every rejection."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from k3snoded.errors import VrrpError
from k3snoded.vrrp import packet
from k3snoded.vrrp.packet import Advertisement, MalformedAdvert

SRC = IPv4Address("198.18.0.11")
DST = packet.VRRP_MULTICAST_GROUP
VIP = IPv4Address("198.18.0.100")


def _advert(**kw: object) -> Advertisement:
    fields: dict[str, object] = {
        "vrid": 51,
        "priority": 150,
        "max_adver_int_cs": 10,
        "addresses": (VIP,),
    }
    fields.update(kw)
    return Advertisement(**fields)  # type: ignore[arg-type]


def test_encode_layout_matches_rfc_5798_section_5_1() -> None:
    raw = packet.encode(_advert(), SRC, DST)
    assert len(raw) == 12
    assert raw[0] == 0x31  # version 3, type 1
    assert raw[1] == 51 and raw[2] == 150 and raw[3] == 1
    assert struct.unpack("!H", raw[4:6])[0] == 10  # rsvd 0, max adver int 10 cs
    assert raw[8:12] == VIP.packed


def test_checksum_is_over_pseudo_header_and_message() -> None:
    raw = packet.encode(_advert(), SRC, DST)
    pseudo = SRC.packed + DST.packed + bytes([0, 112]) + struct.pack("!H", len(raw))
    assert packet.checksum(pseudo + raw) == 0
    # Computed independently: zero the field, sum 16-bit words, fold, complement.
    zeroed = raw[:6] + b"\0\0" + raw[8:]
    words = struct.unpack(f"!{(len(pseudo) + len(zeroed)) // 2}H", pseudo + zeroed)
    total = sum(words)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    assert struct.unpack("!H", raw[6:8])[0] == (~total & 0xFFFF)


def test_checksum_depends_on_destination() -> None:
    """Unicast adverts carry a different pseudo-header: the same advert must not verify."""
    raw = packet.encode(_advert(), SRC, DST)
    with pytest.raises(MalformedAdvert, match="checksum"):
        packet.decode(raw, SRC, IPv4Address("198.18.0.12"))


@pytest.mark.parametrize(
    "advert",
    [
        _advert(),
        _advert(priority=0),
        _advert(priority=255, vrid=1, max_adver_int_cs=4095),
        _advert(addresses=(VIP, IPv4Address("198.18.0.101"), IPv4Address("10.0.0.1"))),
    ],
)
def test_round_trip(advert: Advertisement) -> None:
    assert packet.decode(packet.encode(advert, SRC, DST), SRC, DST) == advert


def test_interval_property_and_conversion() -> None:
    assert _advert(max_adver_int_cs=10).interval == pytest.approx(0.1)
    assert packet.interval_to_cs(0.1) == 10
    assert packet.interval_to_cs(1) == 100
    for bad in (0, 0.004, 41):
        with pytest.raises(ValueError):
            packet.interval_to_cs(bad)


def _reencode(raw: bytes, mutate: int, value: int) -> bytes:
    """Change one byte and fix the checksum, so only the intended check can fail."""
    b = bytearray(raw)
    b[mutate] = value
    b[6:8] = b"\0\0"
    pseudo = SRC.packed + DST.packed + bytes([0, 112]) + struct.pack("!H", len(b))
    b[6:8] = struct.pack("!H", packet.checksum(pseudo + bytes(b)))
    return bytes(b)


GOOD = packet.encode(_advert(), SRC, DST)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (GOOD[:11], "too short"),
        (b"", "too short"),
        (_reencode(GOOD, 0, 0x21), "version 2"),
        (_reencode(GOOD, 0, 0x32), "type 2"),
        (_reencode(GOOD, 3, 2), "does not match 2"),
        (_reencode(GOOD, 3, 0), "no addresses"),
        (_reencode(GOOD, 1, 0), "VRID 0"),
        (_reencode(_reencode(GOOD, 4, 0), 5, 0), "interval 0"),
        (GOOD[:6] + bytes([GOOD[6] ^ 1]) + GOOD[7:], "checksum"),
        (GOOD + b"\0\0\0\0", "does not match 1"),
    ],
)
def test_decode_rejects(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedAdvert, match=reason) as info:
        packet.decode(raw, SRC, DST)
    assert isinstance(info.value, VrrpError)


def test_reserved_bits_are_ignored_on_receipt() -> None:
    raw = _reencode(GOOD, 4, 0xF0)  # rsvd nibble set, interval high bits 0
    assert packet.decode(raw, SRC, DST).max_adver_int_cs == 10


@pytest.mark.parametrize(
    "advert",
    [_advert(vrid=0), _advert(priority=256), _advert(max_adver_int_cs=0), _advert(addresses=())],
)
def test_encode_refuses_out_of_range(advert: Advertisement) -> None:
    with pytest.raises(ValueError):
        packet.encode(advert, SRC, DST)


def test_parse_ipv4_header() -> None:
    payload = packet.encode(_advert(), SRC, DST)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 0, 0, 255, 112, 0, SRC.packed, DST.packed
    )
    d = packet.parse_ipv4(header + payload + b"pad")
    assert (d.source, d.destination, d.ttl, d.protocol) == (SRC, DST, 255, 112)
    assert d.payload == payload
    with pytest.raises(MalformedAdvert):
        packet.parse_ipv4(b"\x45" + b"\0" * 10)
    with pytest.raises(MalformedAdvert):
        packet.parse_ipv4(b"\x60" + b"\0" * 40)


def test_parse_address_refuses_ipv6() -> None:
    assert packet.parse_address("198.18.0.100") == VIP
    with pytest.raises(VrrpError, match="IPv6"):
        packet.parse_address("fd00::1")
