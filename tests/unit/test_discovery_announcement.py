"""Peer <-> announced fields <-> TXT properties: round trips and every malformed input."""

from __future__ import annotations

import pytest

from k3snoded.discovery.announcement import (
    decode_txt,
    encode_txt,
    peer_from_fields,
    peer_to_fields,
)
from k3snoded.discovery.signing import derive_key, sign_record, verify_record
from k3snoded.model import Peer, Role

KEY = derive_key("s3cret", "lab")
NOW = 1_764_080_000.0

PEERS = [
    Peer("n1", "lab", ("198.18.0.11",), 6480, Role.SERVER, "198.18.0.100"),
    Peer("n2", "lab", ("198.18.0.12", "fd00::12"), 1, Role.AGENT, "k3s.example.org"),
    Peer("agent-7", "lab", (), 65535),
    Peer("n3", "lab", ("198.18.0.13",), 6480, Role.SERVER, None, "ab" * 32, agent_token=True),
    Peer("n4", "lab", ("198.18.0.14",), 6480, Role.AGENT, "198.18.0.100", "cd" * 32),
]


@pytest.mark.parametrize("peer", PEERS, ids=lambda p: p.name)
def test_peer_round_trip_through_signed_txt(peer: Peer) -> None:
    record = sign_record(KEY, peer_to_fields(peer), NOW)
    txt = encode_txt(record)
    assert all(len(k) + 1 + len(v) <= 255 for k, v in txt.items())
    back = decode_txt(dict(txt))  # zeroconf hands back dict[bytes, bytes | None]
    fields = verify_record(KEY, back, NOW + 100, max_age=300, cluster="lab")
    assert peer_from_fields(fields) == peer


def test_registration_omitted_when_unknown() -> None:
    fields = peer_to_fields(PEERS[2])
    assert "g" not in fields
    assert fields == {"v": "1", "n": "agent-7", "c": "lab", "a": "", "p": "65535", "r": "none"}


def test_worst_case_fields_fit() -> None:
    addresses = tuple(f"198.18.0.{i}" for i in range(100, 115))
    peer = Peer("n" * 63, "c" * 63, addresses, 6480, Role.SERVER, "r" * 63, "f" * 64, True)
    encode_txt(sign_record(KEY, peer_to_fields(peer), NOW))


def test_too_long_item_is_refused() -> None:
    with pytest.raises(ValueError, match="255"):
        encode_txt({"a": "x" * 254})
    with pytest.raises(ValueError, match="255"):
        encode_txt({"a=b": "x"})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": "2"}, "version"),
        ({"n": None}, "missing field 'n'"),
        ({"a": "198.18.0.300"}, "bad address"),
        ({"a": "host.example"}, "bad address"),
        ({"p": "0"}, "bad port"),
        ({"p": "65536"}, "bad port"),
        ({"p": "٣"}, "bad port"),
        ({"p": "-1"}, "bad port"),
        ({"r": "king"}, "bad role"),
        ({"n": ""}, "bad node name"),
        ({"n": "a\nb"}, "bad node name"),
        ({"n": "x" * 64}, "bad node name"),
        ({"g": "a,b"}, "bad registration"),
        ({"h": "AB" * 32}, "bad CA hash"),
        ({"h": "ab" * 31}, "bad CA hash"),
        ({"t": "1"}, "bad agent-token"),  # an agent-token mode without a CA hash
        ({"h": "ab" * 32, "t": "yes"}, "bad agent-token"),
    ],
)
def test_malformed_fields(change: dict[str, str | None], reason: str) -> None:
    fields = peer_to_fields(PEERS[0])
    for k, v in change.items():
        if v is None:
            del fields[k]
        else:
            fields[k] = v
    with pytest.raises(ValueError, match=reason):
        peer_from_fields(fields)


def test_decode_txt_refuses_valueless_and_non_utf8() -> None:
    with pytest.raises(ValueError, match="without value"):
        decode_txt({b"n": None})
    with pytest.raises(ValueError, match="UTF-8"):
        decode_txt({b"n": b"\xff"})
    assert decode_txt({b"n": b""}) == {"n": ""}
