"""Property tests: every parser of network input rejects garbage cleanly (issue 7).

Config, endpoints, signatures and mDNS TXT records have their own fuzzers; this file covers
VRRP datagrams and peer-API answers and fields: any input gives a value or the module's own
rejection, never another exception.
"""

from __future__ import annotations

import contextlib
import json
from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from k3snoded.discovery.announcement import peer_from_fields
from k3snoded.discovery.peer_api import parse_peers
from k3snoded.errors import AuthenticationError
from k3snoded.vrrp import packet

addresses = st.integers(min_value=0, max_value=2**32 - 1).map(IPv4Address)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), addresses, addresses)
def test_vrrp_decode_never_crashes(data: bytes, src: IPv4Address, dst: IPv4Address) -> None:
    try:
        advert = packet.decode(data, src, dst)
    except packet.MalformedAdvert:
        return
    assert 1 <= advert.vrid <= 255  # a decoded advert is a well-formed one


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_raw_ipv4_datagrams_never_crash(data: bytes) -> None:
    with contextlib.suppress(packet.MalformedAdvert):
        packet.parse_ipv4(data)


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        lambda a, vrid, prio, cs, addrs: (a, vrid, prio, cs, addrs),
        addresses,
        st.integers(1, 255),
        st.integers(0, 255),
        st.integers(1, 4095),
        st.lists(addresses, min_size=1, max_size=4),
    ),
    st.integers(0, 40),
    st.integers(0, 255),
)
def test_a_flipped_byte_in_a_valid_advert_is_rejected_or_still_valid(
    fields: tuple[IPv4Address, int, int, int, list[IPv4Address]], at: int, value: int
) -> None:
    src, vrid, prio, cs, addrs = fields
    dst = IPv4Address("224.0.0.18")
    good = packet.encode(
        packet.Advertisement(vrid=vrid, priority=prio, max_adver_int_cs=cs, addresses=tuple(addrs)),
        src,
        dst,
    )
    assert packet.decode(good, src, dst).vrid == vrid
    bad = bytearray(good)
    if at < len(bad):
        bad[at] = value
    with contextlib.suppress(packet.MalformedAdvert):
        packet.decode(bytes(bad), src, dst)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
def test_peer_answers_never_crash(body: bytes) -> None:
    with contextlib.suppress(AuthenticationError):
        parse_peers(body, "lab")


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["v", "n", "c", "a", "p", "r", "g", "x"]), st.text(max_size=30))
)
def test_announced_fields_never_crash(fields: dict[str, str]) -> None:
    with contextlib.suppress(ValueError):
        peer_from_fields(fields)
