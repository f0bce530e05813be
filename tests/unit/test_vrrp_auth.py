"""Authenticated VRRP adverts (keepalived's auth_hmac trailer): format, every refusal, replay."""

from __future__ import annotations

import contextlib
import logging
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k3snoded.discovery.signing import derive_key
from k3snoded.vrrp import auth, packet
from k3snoded.vrrp.auth import AdvertAuth, AuthRejected

KEY = auth.derive_vrrp_key("s3cret", "lab")
SRC = IPv4Address("198.18.0.11")
OTHER = IPv4Address("198.18.0.12")
GROUP = packet.VRRP_MULTICAST_GROUP
NOW = 1_764_000_000.25


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def advert(priority: int = 100, vrid: int = 51, src: IPv4Address = SRC) -> bytes:
    adv = packet.Advertisement(vrid, priority, 10, (IPv4Address("198.18.0.100"),))
    return packet.encode(adv, src, GROUP)


def pair(clock: Clock | None = None) -> tuple[AdvertAuth, AdvertAuth]:
    clock = clock or Clock()
    return AdvertAuth(KEY, clock=clock), AdvertAuth(KEY, clock=clock)


def reason(receiver: AdvertAuth, message: bytes, trailer: bytes | None, src: IPv4Address) -> str:
    with pytest.raises(AuthRejected) as info:
        receiver.verify(message, trailer, src)
    return info.value.reason


def test_the_drafts_ipv4_vector_verifies() -> None:
    """draft-cassen-vrrp-auth-hmac's IPv4 appendix image (also keepalived's test vector):
    key 00..1f, VRID 51, priority 200, source 198.51.100.10, sequence 0x6800000080000000."""
    image = bytes.fromhex(
        "3133c80100644402c00002640101000068000000800000001b84bc4e8e43892dc6d98448f8ee2265"
    )
    message, trailer = auth.split(image)
    assert trailer is not None and len(message) == 12
    t = auth.parse_trailer(trailer)
    assert (t.ext_type, t.key_id, t.reserved, t.seq) == (1, 1, 0, 0x6800000080000000)
    source = IPv4Address("198.51.100.10")
    assert auth.compute_mac(bytes(range(32)), message, source, trailer[:12]) == t.mac
    receiver = AdvertAuth(bytes(range(32)), clock=Clock(t.timestamp))
    receiver.verify(message, trailer, source)  # no exception
    # Everything but the checksum is covered: priority 201 instead of 200 fails.
    fresh = AdvertAuth(bytes(range(32)), clock=Clock(t.timestamp))
    assert reason(fresh, message[:2] + b"\xc9" + message[3:], trailer, source) == auth.BAD_HMAC


def test_round_trip_and_the_trailer_layout() -> None:
    sender, receiver = pair()
    message = advert()
    trailer = sender.trailer(message, SRC)
    assert len(trailer) == auth.TRAILER_SIZE
    ext, key_id, reserved, sec, frac, _ctr = struct.unpack("!BBHIHH", trailer[:12])
    assert (ext, key_id, reserved, sec, frac) == (1, 1, 0, int(NOW), 0x4000)
    assert auth.split(message + trailer) == (message, trailer)
    assert auth.split(message) == (message, None)
    assert receiver.verify(message, trailer, SRC) == pytest.approx(0.0)


def test_one_trailer_serves_every_unicast_copy() -> None:
    sender, receiver = pair()
    a = packet.encode(packet.decode(advert(), SRC, GROUP), SRC, IPv4Address("198.18.0.12"))
    b = packet.encode(packet.decode(advert(), SRC, GROUP), SRC, IPv4Address("198.18.0.13"))
    assert a != b  # the checksums differ
    trailer = sender.trailer(a, SRC)
    receiver.verify(b, trailer, SRC)


def test_every_refusal() -> None:
    clock = Clock()
    sender, receiver = pair(clock)
    message = advert()
    trailer = sender.trailer(message, SRC)
    assert reason(receiver, message, None, SRC) == auth.UNAUTHENTICATED
    assert reason(receiver, message, trailer, OTHER) == auth.BAD_HMAC  # bound to the source
    assert reason(receiver, advert(vrid=52), trailer, SRC) == auth.BAD_HMAC  # and to the VRID
    assert reason(receiver, advert(priority=254), trailer, SRC) == auth.BAD_HMAC
    wrong = AdvertAuth(auth.derive_vrrp_key("guessed", "lab"), clock=clock)
    assert reason(receiver, message, wrong.trailer(message, SRC), SRC) == auth.BAD_HMAC
    other_cluster = AdvertAuth(auth.derive_vrrp_key("s3cret", "other"), clock=clock)
    assert reason(receiver, message, other_cluster.trailer(message, SRC), SRC) == auth.BAD_HMAC
    assert reason(receiver, message, b"\x02" + trailer[1:], SRC) == auth.MALFORMED
    assert reason(receiver, message, trailer[:2] + b"\0\1" + trailer[4:], SRC) == auth.MALFORMED
    assert reason(receiver, message, trailer[:1] + b"\x07" + trailer[2:], SRC) == auth.UNKNOWN_KEY
    assert reason(receiver, message, trailer[:-1], SRC) == auth.MALFORMED
    receiver.verify(message, trailer, SRC)
    assert reason(receiver, message, trailer, SRC) == auth.REPLAYED


def test_replays_and_the_window() -> None:
    clock = Clock()
    sender, receiver = pair(clock)
    message = advert()
    first, second = sender.trailer(message, SRC), sender.trailer(message, SRC)
    assert auth.parse_trailer(second).seq == auth.parse_trailer(first).seq + 1  # same instant
    receiver.verify(message, second, SRC)
    assert reason(receiver, message, first, SRC) == auth.REPLAYED  # older than the last
    # A fresh receiver (just restarted) takes a capture only within the window.
    clock.now += auth.DEFAULT_WINDOW + 1
    assert reason(AdvertAuth(KEY, clock=clock), message, first, SRC) == auth.STALE
    clock.now = NOW - auth.DEFAULT_WINDOW - 1
    assert reason(AdvertAuth(KEY, clock=clock), message, first, SRC) == auth.STALE  # future


def test_a_sender_whose_clock_steps_back_recovers() -> None:
    """Stepped back by more than the window, a sender restarts its sequence from its clock,
    and receivers forget marks whose own timestamp left the window."""
    sender_clock, receiver_clock = Clock(), Clock()
    sender = AdvertAuth(KEY, clock=sender_clock)
    receiver = AdvertAuth(KEY, clock=receiver_clock)
    message = advert()
    receiver.verify(message, sender.trailer(message, SRC), SRC)
    sender_clock.now -= 100
    receiver_clock.now -= 100
    receiver.verify(message, sender.trailer(message, SRC), SRC)  # no "replayed"
    # A small step back keeps the sequence growing instead.
    before = auth.parse_trailer(sender.trailer(message, SRC)).seq
    sender_clock.now -= 5
    assert auth.parse_trailer(sender.trailer(message, SRC)).seq == before + 1


def test_the_sender_table_is_bounded_and_only_verified_senders_enter_it() -> None:
    clock = Clock()
    receiver = AdvertAuth(KEY, clock=clock, max_senders=4)
    signers = {IPv4Address(f"198.18.0.{i}"): AdvertAuth(KEY, clock=clock) for i in range(1, 10)}
    for src, signer in signers.items():
        message = advert(src=src)
        receiver.verify(message, signer.trailer(message, src), src)
        reason(receiver, message, bytes(28), src)  # forged: must not take a slot
    assert len(receiver._marks) == 4


def test_keys_are_separate_and_bounded() -> None:
    assert len(KEY) == 32
    assert derive_key("s3cret", "lab") != KEY  # not the announcement key
    assert auth.keepalived_key(KEY) == "hex:" + KEY.hex()
    with pytest.raises(ValueError, match="32 to 64"):
        AdvertAuth(b"short")
    with pytest.raises(ValueError, match="window"):
        AdvertAuth(KEY, window=0.5)


def test_refusals_are_logged_once_per_source_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    drops = auth.AuthDrops()
    caplog.set_level(logging.WARNING, logger="k3snoded.vrrp.auth")
    for _ in range(50):
        drops.refused(AuthRejected(auth.BAD_HMAC, "x"), SRC)
        drops.refused(AuthRejected(auth.UNAUTHENTICATED, "y"), SRC)
    drops.refused(AuthRejected(auth.BAD_HMAC, "x"), OTHER)
    assert drops.counts == {auth.BAD_HMAC: 51, auth.UNAUTHENTICATED: 50}
    assert drops.total == 101
    assert len(caplog.records) == 3
    # A flood of spoofed sources writes a bounded number of lines.
    caplog.clear()
    for i in range(2000):
        drops.refused(AuthRejected(auth.BAD_HMAC, "x"), IPv4Address(0x0A000000 + i))
    assert len(caplog.records) <= 10


addresses = st.integers(min_value=0, max_value=2**32 - 1).map(IPv4Address)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.binary(max_size=40), addresses)
def test_any_message_and_trailer_is_refused_cleanly(
    message: bytes, trailer: bytes, src: IPv4Address
) -> None:
    receiver = AdvertAuth(KEY, clock=Clock())
    with contextlib.suppress(AuthRejected):
        receiver.verify(message, trailer, src)
        raise AssertionError("random bytes verified")  # pragma: no cover


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_split_never_crashes(data: bytes) -> None:
    message, trailer = auth.split(data)
    assert message + (trailer or b"") == data
    if trailer is not None:
        assert len(trailer) == auth.TRAILER_SIZE


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 12 + auth.TRAILER_SIZE - 1), st.integers(1, 255))
def test_a_flipped_byte_is_refused_unless_it_is_the_checksum(at: int, flip: int) -> None:
    sender, receiver = pair()
    image = bytearray(advert() + sender.trailer(advert(), SRC))
    image[at] ^= flip
    message, trailer = auth.split(bytes(image))
    if at in (6, 7):  # the checksum: not covered (packet.decode checks it instead)
        receiver.verify(message, trailer, SRC)
        return
    with pytest.raises(AuthRejected):
        receiver.verify(message, trailer, SRC)


def test_refusals_are_a_metric_by_reason() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from k3snoded.metrics import render_metrics

    status = {"vip": {"held": True, "refused": {auth.BAD_HMAC: 7, auth.UNAUTHENTICATED: 0}}}
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for fam in text_string_to_metric_families(render_metrics(status))
        for s in fam.samples
    }
    name = "k3snoded_vrrp_adverts_refused_total"
    assert samples[(name, (("reason", "bad-hmac"),))] == 7
    assert samples[(name, (("reason", "unauthenticated"),))] == 0
