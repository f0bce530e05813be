"""Authenticated VRRP adverts: keepalived's ``auth_hmac`` trailer, keyed from the cluster token.

Wire format (keepalived 2.4's ``vrrp_auth_hmac.c``, IETF draft-cassen-vrrp-auth-hmac): a 28-byte
trailer follows the VRRPv3 message (header and addresses). The VRRP checksum and the IPv4 total
length are unchanged in meaning: the checksum still covers the message only, the IP length
includes the trailer. A receiver tells a trailer from its absence by the length alone.

====  =========  ===============================================================
off   size       field
====  =========  ===============================================================
0     1          ext_type: 1 = HMAC-SHA256 truncated to 128 bits
1     1          key_id: which configured key verifies it (we use 1)
2     2          reserved, zero
4     4          seconds since the Unix epoch (UTC)          \\  together a 64-bit
8     2          1/65536 fractions of a second                 > sequence number,
10    2          counter within one timestamp                 /  growing per sender
12    16         HMAC-SHA256(key, input)[:16]
====  =========  ===============================================================

The HMAC input is a 20-byte pseudo-header (``4, 3, VRID, 0``, the IPv4 source, 12 zero bytes),
then the VRRP message with its checksum read as zero, then the trailer's first 12 bytes, then
16 zero bytes. So an advert is bound to its VRID and its claimed sender, and a changed
priority, interval, address or sequence number fails.

Replay protection, as keepalived's ``anti_replay time``: an advert whose timestamp is more than
``window`` seconds from our clock is stale (checked before the HMAC, so a flood of old captures
costs no digest), and each sender's sequence must grow: the highest one accepted from each
source address is remembered (at most ``max_senders`` sources, least recently used forgotten;
only adverts whose HMAC verified get a slot, so strangers cannot churn the table). A mark whose
own timestamp left the window is forgotten, which lets a sender whose clock was stepped back
recover without letting any replay in (the window refuses those).

The key is our own (:func:`derive_vrrp_key`: HKDF of the token with its own info string), so
giving it to keepalived (``key 1 hex:...``, see :func:`keepalived_key`) exposes neither the
token nor the keys that sign announcements and peer-API requests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from k3snoded.discovery.signing import derive_purpose_key
from k3snoded.errors import VrrpError
from k3snoded.ratelimit import OncePerKey

log = logging.getLogger(__name__)

TRAILER_SIZE = 28
MAC_SIZE = 16
EXT_HMAC_SHA256 = 1
KEY_ID = 1
DEFAULT_WINDOW = 30.0  # seconds; the peer API asks the same clock agreement of the nodes
MAX_SENDERS = 64
KEY_MIN, KEY_MAX = 32, 64  # keepalived's bounds for auth_hmac keys

_TRAILER = struct.Struct("!BBHIHH16s")
_PREFIX = struct.Struct("!BBHIHH")  # the trailer without its MAC
_VRRP_HEADER = 8
_SEQ_MOD = 1 << 64

# Why an authenticated receiver dropped an advert (the metric's ``reason`` label).
UNAUTHENTICATED = "unauthenticated"  # no trailer
MALFORMED = "auth-malformed"  # unknown scheme or non-zero reserved field
UNKNOWN_KEY = "unknown-key"
STALE = "stale"  # timestamp outside the window
BAD_HMAC = "bad-hmac"  # forged, altered, or another key
REPLAYED = "replayed"  # sequence not above the last accepted from that sender
REASONS = (UNAUTHENTICATED, MALFORMED, UNKNOWN_KEY, STALE, BAD_HMAC, REPLAYED)

Clock = Callable[[], float]


class AuthRejected(VrrpError):
    """An advert failed authentication; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def derive_vrrp_key(token: str, cluster: str) -> bytes:
    """The 32-byte advert key of a cluster: HKDF of the token, info ``k3snoded-vrrp-v1``."""
    return derive_purpose_key(token, cluster, "vrrp")


def keepalived_key(key: bytes) -> str:
    """The key as keepalived reads it (``key 1 hex:...`` or a ``file:`` holding this line)."""
    return "hex:" + key.hex()


@dataclass(frozen=True)
class Trailer:
    """A decoded trailer (not yet verified)."""

    ext_type: int
    key_id: int
    reserved: int
    seq: int  # seconds << 32 | fraction << 16 | counter
    mac: bytes

    @property
    def timestamp(self) -> float:
        """The sender's clock when it signed: seconds plus the 16-bit fraction."""
        return (self.seq >> 32) + ((self.seq >> 16) & 0xFFFF) / 65536


def split(message: bytes) -> tuple[bytes, bytes | None]:
    """The VRRP message and its trailer, when the length says exactly one follows."""
    if len(message) >= _VRRP_HEADER:
        size = _VRRP_HEADER + 4 * message[3]  # IPv4: four bytes per address
        if len(message) == size + TRAILER_SIZE:
            return message[:size], message[size:]
    return message, None


def parse_trailer(data: bytes) -> Trailer:
    """Decode 28 bytes; AuthRejected(MALFORMED) for any other length."""
    if len(data) != TRAILER_SIZE:
        raise AuthRejected(MALFORMED, f"trailer of {len(data)} bytes, expected {TRAILER_SIZE}")
    ext, key_id, reserved, sec, frac, ctr, mac = _TRAILER.unpack(data)
    return Trailer(ext, key_id, reserved, (sec << 32) | (frac << 16) | ctr, mac)


def _pseudo_header(vrid: int, source: IPv4Address) -> bytes:
    return bytes((4, 3, vrid, 0)) + source.packed + bytes(12)


def compute_mac(
    key: bytes | hmac.HMAC, message: bytes, source: IPv4Address, prefix: bytes
) -> bytes:
    """HMAC-SHA256 over pseudo-header, message (checksum as zero), trailer prefix, zero MAC.

    ``key`` is the key, or an HMAC already keyed with it (``keyed``): copying one costs no
    digest look-up, which OpenSSL 3 otherwise repeats (under a lock) for every advert."""
    if len(message) < _VRRP_HEADER or len(prefix) != _PREFIX.size:
        raise ValueError("a VRRP message and a 12-byte trailer prefix are needed")
    data = b"".join(
        (
            _pseudo_header(message[1], source),
            message[:6],
            b"\0\0",
            message[8:],
            prefix,
            bytes(MAC_SIZE),
        )
    )
    mac = keyed(key) if isinstance(key, bytes) else key.copy()
    mac.update(data)
    return mac.digest()[:MAC_SIZE]


def keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with ``key``, to copy for each MAC."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _after(a: int, b: int) -> bool:
    """RFC 1982 serial-number order on 64 bits: a comes after b."""
    diff = (a - b) % _SEQ_MOD
    return 0 < diff < (1 << 63)


def _clock_seq(now: float) -> int:
    seconds = int(now)
    fraction = min(int((now - seconds) * 65536), 0xFFFF)
    return ((seconds & 0xFFFFFFFF) << 32) | (fraction << 16)


class AdvertAuth:
    """Signs our adverts and verifies others' (one per speaker; not thread-safe)."""

    def __init__(
        self,
        key: bytes,
        *,
        window: float = DEFAULT_WINDOW,
        max_senders: int = MAX_SENDERS,
        clock: Clock = time.time,
    ) -> None:
        if not KEY_MIN <= len(key) <= KEY_MAX:
            raise ValueError(f"an advert key has {KEY_MIN} to {KEY_MAX} bytes, not {len(key)}")
        if not 1 <= window <= 300:
            raise ValueError("the replay window is 1 to 300 s (keepalived's bounds)")
        self._key = keyed(key)
        self.window = window
        self._max_senders = max_senders
        self._clock = clock
        self._send_seq = 0
        self._marks: OrderedDict[IPv4Address, int] = OrderedDict()  # sender -> highest seq

    def _next_seq(self) -> int:
        clock = _clock_seq(self._clock())
        if _after(clock, self._send_seq):
            self._send_seq = clock
        elif (self._send_seq >> 32) - (clock >> 32) > self.window:
            self._send_seq = clock  # our clock was stepped back: start again from it
        else:
            self._send_seq = (self._send_seq + 1) % _SEQ_MOD
        return self._send_seq

    def trailer(self, message: bytes, source: IPv4Address) -> bytes:
        """The trailer for ``message`` sent from ``source``; each call takes a new sequence.

        The checksum is not covered, so one trailer serves every copy of an advert (unicast
        sends one per peer, each with its own checksum).
        """
        seq = self._next_seq()
        prefix = _PREFIX.pack(
            EXT_HMAC_SHA256, KEY_ID, 0, seq >> 32, (seq >> 16) & 0xFFFF, seq & 0xFFFF
        )
        return prefix + compute_mac(self._key, message, source, prefix)

    def verify(self, message: bytes, trailer: bytes | None, source: IPv4Address) -> float:
        """Accept an advert or raise AuthRejected; returns the sender's clock skew (s)."""
        if trailer is None:
            raise AuthRejected(UNAUTHENTICATED, f"advert from {source} carries no HMAC trailer")
        t = parse_trailer(trailer)
        if len(message) < _VRRP_HEADER:
            raise AuthRejected(MALFORMED, f"message of {len(message)} bytes from {source}")
        if t.ext_type != EXT_HMAC_SHA256 or t.reserved != 0:
            raise AuthRejected(
                MALFORMED, f"trailer type {t.ext_type}, reserved {t.reserved} from {source}"
            )
        now = self._clock()
        skew = now - t.timestamp
        if abs(skew) > self.window:
            raise AuthRejected(
                STALE,
                f"advert from {source} signed {skew:+.0f} s from our clock (window "
                f"{self.window:.0f} s): a replay, or clocks that disagree",
            )
        if t.key_id != KEY_ID:
            raise AuthRejected(UNKNOWN_KEY, f"key id {t.key_id} from {source}, expected {KEY_ID}")
        expected = compute_mac(self._key, message, source, trailer[: _PREFIX.size])
        if not hmac.compare_digest(expected, t.mac):
            raise AuthRejected(BAD_HMAC, f"advert from {source} fails its HMAC (another key?)")
        mark = self._marks.get(source)
        if mark is not None and abs(now - (mark >> 32)) > self.window:
            mark = None  # only orders adverts the window refuses anyway
        if mark is not None and not _after(t.seq, mark):
            raise AuthRejected(REPLAYED, f"advert from {source} repeats an older sequence")
        self._marks[source] = t.seq
        self._marks.move_to_end(source)
        while len(self._marks) > self._max_senders:
            self._marks.popitem(last=False)
        return skew


class AuthDrops:
    """Counts refused adverts by reason; logs each (reason, source) once, rate-limited overall."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._once = OncePerKey(log, "refused VRRP adverts")
        self._skew_warned = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def refused(self, exc: AuthRejected, source: IPv4Address) -> None:
        self.counts[exc.reason] = self.counts.get(exc.reason, 0) + 1
        self._once(
            (exc.reason, source),
            "dropping an unauthenticated VRRP advert (%s): %s; further ones from %s are counted",
            exc.reason,
            exc.detail,
            source,
        )

    def accepted(self, skew: float, window: float, source: IPv4Address) -> None:
        """Warn once when a peer's clock drifts past half the window (before adverts fail)."""
        if abs(skew) > window / 2 and not self._skew_warned:
            self._skew_warned = True
            log.warning(
                "the VRRP peer %s signs %+.0f s away from our clock; past %.0f s its adverts "
                "are refused: check NTP",
                source,
                skew,
                window,
            )
