"""Authentication of announcements and peer-API messages (D3). Pure: no I/O, no clock.

Every node derives the same 32-byte key from the cluster token and the cluster name
(:func:`derive_key`); the token itself never leaves the machine. Three kinds of message are
signed with HMAC-SHA256 under that key, each with its own domain-separation label so a
signature of one kind can never be replayed as another:

* **records** (mDNS TXT announcements): string fields plus ``ts`` and ``sig``
  (:func:`sign_record`, :func:`verify_record`);
* **requests** to the peer API: headers carrying a timestamp, a random nonce and the MAC over
  method, path and body hash (:func:`sign_request`, :class:`RequestVerifier`, which remembers
  nonces to refuse replays);
* **responses**: headers binding the body to the request's nonce (:func:`sign_response`,
  :func:`verify_response`), so an old or forged answer is ignored.

Every verification failure raises :class:`~k3snoded.errors.AuthenticationError` with a short
reason; anything else escaping from a verifier is a bug. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from k3snoded.errors import AuthenticationError
from k3snoded.tokens import TokenError, normalize

KEY_SIZE = 32
CLUSTER_FIELD = "c"
TS_FIELD = "ts"
SIG_FIELD = "sig"

HEADER_TS = "X-K3snoded-Ts"
HEADER_NONCE = "X-K3snoded-Nonce"
HEADER_SIG = "X-K3snoded-Sig"

_SALT = b"k3snoded-discovery-v1"
_RECORD_LABEL = b"k3snoded-record-v1"
_REQUEST_LABEL = b"k3snoded-request-v1"
_RESPONSE_LABEL = b"k3snoded-response-v1"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_SIG = re.compile(r"^[A-Za-z0-9_-]{43}$")


def token_password(token: str) -> str:
    """The secret part of a k3s token, normalised the way k3s does (``tokens.normalize``).

    ``K10<ca-hash>::<user>:<password>`` and the short form ``<password>`` with the same password
    are the same cluster secret. Raises ValueError for a token k3s itself would refuse.
    """
    try:
        return normalize(token.strip())
    except TokenError as exc:
        raise ValueError(str(exc)) from exc


def _hkdf(token: str, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869), one output block: extract with our salt, expand with ``info``."""
    prk = hmac.new(_SALT, token_password(token).encode(), hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:KEY_SIZE]


def derive_key(token: str, cluster: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the token's password, with the cluster name as context.

    Two clusters sharing a token still get different keys, so one cluster's announcements never
    verify in another.
    """
    if not cluster:
        raise ValueError("cluster name must not be empty")
    return _hkdf(token, b"cluster:" + cluster.encode())


def derive_purpose_key(token: str, cluster: str, purpose: str) -> bytes:
    """A key for one other use of the token (e.g. ``vrrp``), independent of :func:`derive_key`.

    The same HKDF with another ``info`` (``k3snoded-<purpose>-v1``, NUL, the cluster name), so
    knowing one derived key tells nothing about the others, and a key handed to another program
    (keepalived's ``auth_hmac``) cannot sign announcements or peer-API requests.
    """
    if not cluster:
        raise ValueError("cluster name must not be empty")
    if not purpose or not purpose.isascii() or not purpose.isalnum():
        raise ValueError(f"bad key purpose {purpose!r}")
    return _hkdf(token, f"k3snoded-{purpose}-v1".encode() + b"\0cluster:" + cluster.encode())


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # never raises on what a parser let through


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _frame(*parts: bytes) -> bytes:
    """Unambiguous concatenation: every part prefixed with its 4-byte length."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _canonical_fields(fields: Mapping[str, str]) -> bytes:
    items = sorted((_enc(k), _enc(v)) for k, v in fields.items())
    return _frame(_RECORD_LABEL, *(part for item in items for part in item))


def _mac(key: bytes, message: bytes) -> str:
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def _format_ts(now: float) -> str:
    return f"{now:.3f}"


def _check_ts(raw: str | None, now: float, window: float, what: str) -> float:
    if raw is None:
        raise AuthenticationError(f"unsigned {what}: no timestamp")
    try:
        ts = float(raw)
    except ValueError:
        raise AuthenticationError(f"malformed {what} timestamp") from None
    if not math.isfinite(ts):
        raise AuthenticationError(f"malformed {what} timestamp")
    if ts < now - window:
        raise AuthenticationError(f"stale {what}: {now - ts:.0f} s old, window {window:.0f} s")
    if ts > now + window:
        raise AuthenticationError(f"{what} from the future: {ts - now:.0f} s ahead")
    return ts


def _check_sig(expected: str, given: str | None, what: str) -> None:
    if given is None:
        raise AuthenticationError(f"unsigned {what}")
    if not _SIG.match(given) or not hmac.compare_digest(expected, given):
        raise AuthenticationError(f"bad {what} signature")


def sign_record(key: bytes, fields: Mapping[str, str], now: float) -> dict[str, str]:
    """Return ``fields`` plus ``ts`` (now) and ``sig`` (HMAC over every field, sorted)."""
    record = {k: v for k, v in fields.items() if k not in (TS_FIELD, SIG_FIELD)}
    record[TS_FIELD] = _format_ts(now)
    record[SIG_FIELD] = _mac(key, _canonical_fields(record))
    return record


def verify_record(
    key: bytes, record: Mapping[str, str], now: float, *, max_age: float = 30, cluster: str
) -> dict[str, str]:
    """Check a signed record; return its fields without ``sig``.

    Raises AuthenticationError when it is unsigned, of another cluster, forged, or its timestamp
    is further than ``max_age`` from ``now`` in either direction.
    """
    given = record.get(SIG_FIELD)
    if given is None:
        raise AuthenticationError("unsigned record")
    if record.get(CLUSTER_FIELD) != cluster:
        raise AuthenticationError("other cluster")
    fields = {k: v for k, v in record.items() if k != SIG_FIELD}
    _check_sig(_mac(key, _canonical_fields(fields)), given, "record")
    _check_ts(fields.get(TS_FIELD), now, max_age, "record")
    return fields


def _body_hash(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def _request_mac(key: bytes, method: str, path: str, body: bytes, *, ts: str, nonce: str) -> str:
    message = _frame(
        _REQUEST_LABEL,
        _enc(method.upper()),
        _enc(path),
        _enc(ts),
        _enc(nonce),
        _body_hash(body),
    )
    return _mac(key, message)


def new_nonce(random_bytes: bytes) -> str:
    """Encode at least 12 random bytes (from ``os.urandom``/``secrets``) as a request nonce."""
    if len(random_bytes) < 12:
        raise ValueError("a nonce needs at least 12 random bytes")
    return _b64(random_bytes)


def sign_request(  # noqa: PLR0917 (the signature every caller knows)
    key: bytes, method: str, path: str, body: bytes, now: float, nonce: str
) -> dict[str, str]:
    """Headers authenticating one request; ``path`` includes the query string, if any."""
    if not _NONCE.match(nonce):
        raise ValueError("nonce must be 16-64 URL-safe base64 characters")
    ts = _format_ts(now)
    return {
        HEADER_TS: ts,
        HEADER_NONCE: nonce,
        HEADER_SIG: _request_mac(key, method, path, body, ts=ts, nonce=nonce),
    }


@dataclass(frozen=True)
class VerifiedRequest:
    """What a verified request proved: when it was signed, and its nonce (to bind the answer)."""

    ts: float
    nonce: str


class RequestVerifier:
    """Verifies signed requests and refuses replays within the window.

    Nonces are remembered until their timestamp leaves the window (after that the timestamp
    check alone refuses them). The cache is bounded: when ``max_nonces`` live nonces are held,
    new requests are refused ("replay cache full") rather than forgetting a nonce early.
    """

    def __init__(self, key: bytes, window: float = 30, *, max_nonces: int = 10_000) -> None:
        self._key = key
        self._window = window
        self._max = max_nonces
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []  # heap of (forget-after, nonce)

    def __len__(self) -> int:
        return len(self._seen)

    def _evict(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, nonce = heapq.heappop(self._expiry)
            self._seen.discard(nonce)

    def verify(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str], now: float
    ) -> VerifiedRequest:
        """Check one request; raise AuthenticationError with a short reason on failure."""
        raw_ts = headers.get(HEADER_TS)
        nonce = headers.get(HEADER_NONCE)
        given = headers.get(HEADER_SIG)
        if raw_ts is None or nonce is None or given is None:
            raise AuthenticationError("unsigned request")
        if not _NONCE.match(nonce):
            raise AuthenticationError("malformed nonce")
        expected = _request_mac(self._key, method, path, body, ts=raw_ts, nonce=nonce)
        _check_sig(expected, given, "request")
        ts = _check_ts(raw_ts, now, self._window, "request")
        self._evict(now)
        if nonce in self._seen:
            raise AuthenticationError("replayed request")
        if len(self._seen) >= self._max:
            raise AuthenticationError("replay cache full")
        self._seen.add(nonce)
        heapq.heappush(self._expiry, (max(ts, now) + self._window, nonce))
        return VerifiedRequest(ts=ts, nonce=nonce)


def _response_mac(key: bytes, nonce: str, status: int, body: bytes, ts: str) -> str:
    message = _frame(_RESPONSE_LABEL, _enc(nonce), str(status).encode(), _enc(ts), _body_hash(body))
    return _mac(key, message)


def sign_response(
    key: bytes, request_nonce: str, status: int, body: bytes, now: float
) -> dict[str, str]:
    """Headers binding a response body to the request that asked for it."""
    ts = _format_ts(now)
    return {HEADER_TS: ts, HEADER_SIG: _response_mac(key, request_nonce, status, body, ts)}


def verify_response(
    key: bytes,
    request_nonce: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    window: float = 30,
) -> None:
    """Check that a response answers our request (nonce), is fresh, and was not altered."""
    raw_ts = headers.get(HEADER_TS)
    given = headers.get(HEADER_SIG)
    if raw_ts is None or given is None:
        raise AuthenticationError("unsigned response")
    _check_sig(_response_mac(key, request_nonce, status, body, raw_ts), given, "response")
    _check_ts(raw_ts, now, window, "response")
