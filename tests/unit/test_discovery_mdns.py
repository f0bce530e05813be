"""What MdnsDiscovery accepts from a TXT record, without a network: parse_announcement."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import ServiceInfo

from k3snoded.discovery.announcement import encode_txt, peer_to_fields
from k3snoded.discovery.mdns import SERVICE_TYPE, MdnsDiscovery, instance_name, parse_announcement
from k3snoded.discovery.signing import derive_key, sign_record
from k3snoded.errors import AuthenticationError
from k3snoded.model import Peer, Role

KEY = derive_key("s3cret", "lab")
NOW = 1_764_080_000.0
N1 = Peer("n1", "lab", ("198.18.0.11",), 6480, Role.SERVER, "198.18.0.100")


def txt_via_zeroconf(record: dict[str, str]) -> dict[bytes, bytes | None]:
    """Encode as zeroconf would put it on the wire, and parse it back as a receiver does."""
    sent = ServiceInfo(SERVICE_TYPE, f"x.{SERVICE_TYPE}", port=1, properties=encode_txt(record))
    received = ServiceInfo(SERVICE_TYPE, f"x.{SERVICE_TYPE}", properties=sent.text)
    props: dict[bytes, bytes | None] = received.properties
    return props


def test_signed_announcement_round_trip_through_zeroconf_txt() -> None:
    props = txt_via_zeroconf(sign_record(KEY, peer_to_fields(N1), NOW))
    peer, ts = parse_announcement(KEY, "lab", props, NOW + 299)
    assert peer == N1
    assert ts == NOW


@pytest.mark.parametrize(
    ("record", "now", "reason"),
    [
        (peer_to_fields(N1), NOW, "unsigned"),
        (
            sign_record(derive_key("s3cret", "other"), {**peer_to_fields(N1), "c": "other"}, NOW),
            NOW,
            "other cluster",
        ),
        ({**sign_record(KEY, peer_to_fields(N1), NOW), "r": "agent"}, NOW, "bad record signature"),
        (sign_record(derive_key("guess", "lab"), peer_to_fields(N1), NOW), NOW, "bad record"),
        (sign_record(KEY, peer_to_fields(N1), NOW), NOW + 301, "stale"),
        (sign_record(KEY, peer_to_fields(N1), NOW), NOW - 301, "future"),
    ],
    ids=["unsigned", "other-cluster", "altered", "wrong-token", "stale", "future"],
)
def test_refused_announcements(record: dict[str, str], now: float, reason: str) -> None:
    with pytest.raises(AuthenticationError, match=reason):
        parse_announcement(KEY, "lab", txt_via_zeroconf(record), now)


def test_signed_but_malformed_announcement_is_a_value_error() -> None:
    record = sign_record(KEY, {**peer_to_fields(N1), "p": "http"}, NOW)
    with pytest.raises(ValueError, match="bad port"):
        parse_announcement(KEY, "lab", txt_via_zeroconf(record), NOW)


def test_instance_names_are_unique_per_machine_and_valid_labels() -> None:
    a = instance_name("n1", "lab", "198.18.0.11")
    assert a.startswith("n1-") and a.endswith("._k3snoded._tcp.local.")
    assert a == instance_name("n1", "lab", "198.18.0.11")  # stable across restarts
    assert a != instance_name("n1", "lab", "198.18.0.12")
    assert a != instance_name("n1", "other", "198.18.0.11")
    long_name = instance_name("x" * 63, "lab", "198.18.0.11")
    assert len(long_name.split(".")[0]) == 63


def test_refuses_bad_settings_and_foreign_local_peer() -> None:
    with pytest.raises(ValueError, match="resign_interval"):
        MdnsDiscovery(KEY, "lab", "198.18.0.11", resign_interval=300, max_age=300)
    mdns = MdnsDiscovery(KEY, "lab", "198.18.0.11")
    with pytest.raises(ValueError, match="cluster"):
        mdns._check_local(Peer("n1", "other", (), 1))


def test_state_older_announcements_duplicates_goodbyes() -> None:
    """The bookkeeping behind peers(), driven without a network."""
    found: list[Peer] = []
    refused: list[tuple[str, str]] = []
    mdns = MdnsDiscovery(
        KEY,
        "lab",
        "198.18.0.11",
        on_peer=found.append,
        on_reject=lambda i, r: refused.append((i, r)),
    )
    mdns._local = N1
    n2 = Peer("n2", "lab", ("198.18.0.12",), 6480, Role.AGENT)
    n2_server = Peer("n2", "lab", ("198.18.0.12",), 6480, Role.SERVER)
    i2 = instance_name("n2", "lab", "198.18.0.12")
    mdns._accept(i2, n2, NOW)
    assert mdns.peers() == {"n2": n2}
    assert mdns.changed.is_set()
    mdns._accept(i2, n2_server, NOW + 60)
    assert mdns.peers()["n2"] == n2_server
    # a replayed, older announcement cannot roll the role back
    mdns._accept(i2, n2, NOW + 30)
    assert mdns.peers()["n2"] == n2_server
    assert found == [n2, n2_server]
    # another machine announcing our own node name is refused, and reported once
    i1_other = instance_name("n1", "lab", "198.18.0.99")
    mdns._accept(i1_other, Peer("n1", "lab", ("198.18.0.99",), 6480), NOW)
    mdns._accept(i1_other, Peer("n1", "lab", ("198.18.0.99",), 6480), NOW + 1)
    assert "n1" not in mdns.peers()
    assert len(refused) == 1 and "duplicate node name" in refused[0][1]
    assert mdns.rejected[i1_other].endswith("duplicate node name")
    # a signed goodbye removes the peer at once; its last timestamp survives, so a replay of an
    # older record cannot bring it back, while a newer one (the node restarting) does
    mdns.changed.clear()
    mdns._accept(i2, n2_server, NOW + 61, leaving=True)
    assert mdns.peers() == {}
    assert mdns.changed.is_set()
    mdns._accept(i2, n2, NOW + 30)
    assert mdns.peers() == {}
    mdns._accept(i2, n2, NOW + 62)
    assert mdns.peers() == {"n2": n2}
    # a signed goodbye older than what we accepted is a replay: ignored
    mdns._accept(i2, n2, NOW + 61, leaving=True)
    assert mdns.peers() == {"n2": n2}


def test_a_record_under_another_instance_name_is_refused() -> None:
    """A captured record replayed under a name of the attacker's choosing is not the node's."""
    refused: list[tuple[str, str]] = []
    mdns = MdnsDiscovery(KEY, "lab", "198.18.0.11", on_reject=lambda i, r: refused.append((i, r)))
    n2 = Peer("n2", "lab", ("198.18.0.12",), 6480, Role.AGENT)
    mdns._accept(f"replay-n2.{SERVICE_TYPE}", n2, NOW)
    assert mdns.peers() == {}
    assert refused and "does not match" in refused[0][1]
    mdns._accept(instance_name("n2", "lab", "198.18.0.12"), n2, NOW)
    assert mdns.peers() == {"n2": n2}


async def test_an_unsigned_goodbye_is_confirmed_before_a_peer_is_dropped() -> None:
    """Without a network the instance never answers: the goodbye is confirmed, after a delay;
    a goodbye for an unknown instance changes nothing."""
    mdns = MdnsDiscovery(KEY, "lab", "198.18.0.11")
    n2 = Peer("n2", "lab", ("198.18.0.12",), 6480, Role.AGENT)
    i2 = instance_name("n2", "lab", "198.18.0.12")
    mdns._accept(i2, n2, NOW)
    mdns._unverified_goodbye("unknown._k3snoded._tcp.local.")
    mdns._unverified_goodbye(i2)
    mdns._unverified_goodbye(i2)  # one confirmation at a time
    assert mdns.peers() == {"n2": n2}, "dropped on an unverified packet"
    assert len(mdns._tasks) == 1
    await asyncio.wait_for(asyncio.gather(*mdns._tasks), 5)
    assert mdns.peers() == {}
    mdns._accept(i2, n2, NOW - 1)  # its last timestamp survived
    assert mdns.peers() == {}


def test_refused_instance_names_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    mdns = MdnsDiscovery(KEY, "lab", "198.18.0.11")
    caplog.set_level(logging.WARNING)
    for i in range(5000):
        mdns._reject(f"x{i}.{SERVICE_TYPE}", "unsigned record")
    assert len(mdns.rejected) == 1024
    assert f"x4999.{SERVICE_TYPE}" in mdns.rejected
    assert len(caplog.records) <= 10, "a flood must not flood the log"


@settings(max_examples=200)
@given(
    props=st.dictionaries(
        st.binary(max_size=8) | st.sampled_from([b"c", b"ts", b"sig", b"v", b"n"]),
        st.none() | st.binary(max_size=40),
    ),
    now=st.floats(allow_nan=True, allow_infinity=True),
)
def test_random_txt_only_raises_authentication_or_value_error(
    props: dict[bytes, bytes | None], now: float
) -> None:
    with contextlib.suppress(AuthenticationError, ValueError):
        parse_announcement(KEY, "lab", props, now)
