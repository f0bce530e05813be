"""VrrpSpeaker without a network: argument checks, status before start, GARP frames, log-once."""

from __future__ import annotations

import logging
import struct
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

import pytest

from k3snoded.errors import VrrpError
from k3snoded.model import VrrpState
from k3snoded.vrrp import garp
from k3snoded.vrrp.netlink import AddressWriter
from k3snoded.vrrp.speaker import VrrpSpeaker, _DropLog

BASE: dict[str, Any] = {
    "interface": "eth0",
    "vip": "198.18.0.100",
    "prefix": 24,
    "vrid": 51,
    "priority": 100,
    "advert_interval": 0.1,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vrid": 0}, "VRID"),
        ({"vrid": 256}, "VRID"),
        ({"priority": 0}, "priority"),
        ({"priority": 255}, "owner"),
        ({"advert_interval": 0.001}, "interval"),
        ({"advert_interval": 50}, "interval"),
        ({"vip": "fd00::100"}, "IPv6"),
        ({"unicast_peers": ["not-an-address"]}, "not an IPv4"),
        ({"accept_mode": False}, "accept_mode"),
        ({"vip_lifetime": 0}, "vip_lifetime"),
    ],
)
def test_constructor_refuses(change: dict[str, Any], message: str) -> None:
    with pytest.raises(VrrpError, match=message):
        VrrpSpeaker(**{**BASE, **change})


def test_status_before_start_reflects_priority_and_health() -> None:
    sp = VrrpSpeaker(**BASE)
    st = sp.status
    assert st.state is VrrpState.INITIALIZE
    assert (st.priority, st.effective_priority, st.healthy) == (100, 100, True)
    assert st.master is None and not st.holds_vip and st.transitions == 0
    sp.set_healthy(False)
    sp.set_priority(80)
    st = sp.status
    assert (st.priority, st.effective_priority, st.healthy) == (80, 0, False)
    with pytest.raises(VrrpError):
        sp.set_priority(255)


def test_interval_is_rounded_to_centiseconds() -> None:
    assert VrrpSpeaker(**{**BASE, "advert_interval": 0.123}).advert_interval == 0.12


async def test_stop_before_run_returns() -> None:
    await VrrpSpeaker(**BASE).stop()


def test_gratuitous_arp_frame() -> None:
    mac = bytes.fromhex("0200c6120001")
    vip = IPv4Address("198.18.0.100")
    f = garp.frame(mac, vip)
    assert len(f) == 42
    assert f[0:6] == b"\xff" * 6 and f[6:12] == mac
    assert struct.unpack("!H", f[12:14])[0] == 0x0806
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", f[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)  # an ARP request
    assert f[22:28] == mac and f[28:32] == vip.packed  # sender: us, the VIP
    assert f[32:38] == b"\0" * 6 and f[38:42] == vip.packed  # who-has the VIP
    with pytest.raises(ValueError):
        garp.frame(b"\0" * 5, vip)


def test_drop_log_warns_once_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    d = _DropLog("dropping VRRP input")
    with caplog.at_level(logging.WARNING, logger="k3snoded.vrrp.speaker"):
        for _ in range(50):
            d.drop("ttl", "TTL 64")
        d.drop("malformed", "bad checksum")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "dropping VRRP input (ttl): TTL 64" in warnings[0]
    assert d.total == 51 and d.counts == {"ttl": 50, "malformed": 1}


def test_address_writer_message_and_acks() -> None:
    w = AddressWriter(3, IPv4Interface("198.18.0.100/24"), 1)
    m = w._message
    length, kind, flags = struct.unpack_from("=IHH", m)
    assert (length, kind) == (len(m), 20)  # RTM_NEWADDR
    assert flags & 0x100 and flags & 0x400  # NLM_F_REPLACE, NLM_F_CREATE
    family, prefixlen, _flags, _scope, index = struct.unpack_from("=BBBBI", m, 16)
    assert (family, prefixlen, index) == (2, 24, 3)
    assert m.count(IPv4Address("198.18.0.100").packed) == 2  # IFA_LOCAL and IFA_ADDRESS
    assert struct.pack("=II", 1, 1) in m  # preferred and valid lifetime: 1 s

    w._seq = 7

    def ack(seq: int, error: int) -> bytes:
        return struct.pack("=IHHIIi", 36, 2, 0, seq, 0, error) + bytes(16)

    assert w._ack(ack(7, 0))
    assert not w._ack(ack(6, 0))  # an earlier request's answer
    with pytest.raises(VrrpError, match="EPERM"):
        w._ack(ack(7, -1))
