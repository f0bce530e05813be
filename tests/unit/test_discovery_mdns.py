"""What MdnsDiscovery accepts from a TXT record, without a network: parse_announcement."""

from __future__ import annotations

import pytest
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
