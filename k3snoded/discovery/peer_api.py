"""The peer API's discovery endpoint, ``GET /v1/peers``, server side and client side.

Transport: plain HTTP on ``api.listen`` (default port 6480). Every request carries an HMAC
(:func:`signing.sign_request`: timestamp, random nonce, method, path, body hash) and the server
refuses unsigned, forged, stale and replayed ones with ``401`` and a short reason (logged once
per source and reason). Every answer is signed too (:func:`signing.sign_response`), bound to the
request's nonce, so a client ignores forged, altered and replayed answers. This gives integrity
and authentication, not confidentiality: what travels is what mDNS announces anyway (names,
addresses, roles), and the token never leaves the machine.

``https://`` seed URLs are accepted (for an operator's TLS-terminating load balancer); the
certificate is not verified, because trust comes from the HMAC, not from the transport.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

from k3snoded import httpc
from k3snoded.config import DEFAULT_API_PORT as API_PORT
from k3snoded.discovery.announcement import peer_from_fields, peer_to_fields
from k3snoded.discovery.signing import (
    RequestVerifier,
    new_nonce,
    sign_request,
    sign_response,
    verify_response,
)
from k3snoded.errors import AuthenticationError
from k3snoded.httpd import Handler, Request, Response, Router, text
from k3snoded.model import Peer
from k3snoded.ratelimit import OncePerKey

log = logging.getLogger(__name__)

PEERS_PATH = "/v1/peers"
MAX_BODY = 1 << 20  # a peer list of a thousand machines is well under 200 kB
_CALLERS_MAX = 4096

Clock = Callable[[], float]


class PeerApi:
    """Server side: signed-request verification, signed answers, and ``GET /v1/peers``.

    ``peers_provider`` returns what this node knows (from mDNS and seeds) and
    ``local_provider`` this node itself; both are called on every request. A caller may
    describe itself in the (signed) query string, the same fields as an announcement; it is
    then remembered in ``callers()`` and passed on to later callers, so seed-only discovery
    (mDNS off) lets every node that polls a seed find every other one. ``on_caller`` is called
    with each new or changed caller.
    """

    def __init__(
        self,
        key: bytes,
        cluster: str,
        peers_provider: Callable[[], Sequence[Peer]],
        local_provider: Callable[[], Peer],
        *,
        window: float = 30,
        clock: Clock = time.time,
        on_caller: Callable[[Peer], None] | None = None,
    ) -> None:
        self._key = key
        self._on_caller = on_caller
        self._callers: dict[str, Peer] = {}
        self._cluster = cluster
        self._peers = peers_provider
        self._local = local_provider
        self._clock = clock
        self._verifier = RequestVerifier(key, window)
        self._refusals = OncePerKey(log, "refused peer-API requests")
        self.rejected = 0  # requests refused so far (for status and tests)

    def callers(self) -> dict[str, Peer]:
        """Nodes that described themselves when asking us, by name (a copy)."""
        return dict(self._callers)

    def install(self, router: Router) -> None:
        """Add ``GET /v1/peers`` to ``router`` (before the server starts)."""
        router.add_get(PEERS_PATH, self.signed(self.handle_peers))

    def signed(self, handler: Handler) -> Handler:
        """Wrap a handler: verify the request's signature, then sign its answer. The server
        has read the (bounded) body already: ``request.body`` is what was verified."""

        async def wrapper(request: Request) -> Response:
            try:
                verified = self._verifier.verify(
                    request.method, request.target, request.body, request.headers, self._clock()
                )
            except AuthenticationError as exc:
                self._refuse(request.remote, str(exc))
                return text(f"{exc}\n", 401)
            response = await handler(request)
            signature = sign_response(
                self._key, verified.nonce, response.status, response.body, self._clock()
            )
            return Response(
                response.status,
                response.body,
                response.content_type,
                {**response.headers, **signature},
            )

        return wrapper

    def _refuse(self, source: str, reason: str) -> None:
        """Count it; log once per source and kind of reason, a few lines a minute in all
        (the text of a stale-timestamp reason changes with every request)."""
        self.rejected += 1
        key = (source, reason.split(":", 1)[0])
        self._refusals(key, "refused peer-API request from %s: %s", source, reason)

    def _learn_caller(self, request: Request) -> str | None:
        """Remember the caller's self-description, if any; return a reason if it is malformed."""
        try:
            query = parse_qsl(request.query, keep_blank_values=True, errors="strict")
        except (ValueError, UnicodeDecodeError):
            return "malformed self-description"
        if not query:
            return None
        fields = dict(query)
        if len(query) != len(fields):
            return "repeated field in self-description"
        try:
            caller = peer_from_fields(fields)
        except ValueError as exc:
            return f"bad self-description: {exc}"
        if caller.cluster != self._cluster:
            return "self-description of another cluster"
        if self._callers.get(caller.name) != caller:
            if caller.name not in self._callers and len(self._callers) >= _CALLERS_MAX:
                return "too many callers"
            self._callers[caller.name] = caller
            if self._on_caller is not None:
                self._on_caller(caller)
        return None

    async def handle_peers(self, request: Request) -> Response:
        """The unsigned handler; mount it through ``signed()`` (``install`` does)."""
        problem = self._learn_caller(request)
        if problem is not None:
            return text(f"{problem}\n", 400)
        local = self._local()
        known = {p.name: p for p in self._peers()}
        known.update(self._callers)  # a node's own latest word about itself wins
        peers = [p for p in known.values() if p.cluster == self._cluster and p.name != local.name]
        document = {
            "cluster": self._cluster,
            "local": peer_to_fields(local),
            "peers": [peer_to_fields(p) for p in peers],
        }
        body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        return Response(200, body, "application/json")


def base_url(url: str) -> str:
    """``scheme://host:port`` of a seed: ``host``, ``host:port`` and ``[v6]:port`` (the forms
    ``check-config`` accepts) are the peer API over http, on its default port when none is
    given; ValueError if it is not http(s) with a host."""
    if "://" not in url:
        url = f"http://{url}" if url.startswith("[") or ":" in url else f"http://{url}:{API_PORT}"
    try:
        parsed = urlsplit(url)
        port = parsed.port
    except ValueError:
        raise ValueError(f"seed {url!r} has a malformed address or port") from None
    host = parsed.hostname
    if parsed.scheme not in ("http", "https") or not host:
        raise ValueError(f"seed {url!r} is not an http:// or https:// URL with a host")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username:
        raise ValueError(f"seed {url!r} must not have a path; k3snoded adds {PEERS_PATH}")
    host = f"[{host}]" if ":" in host else host
    return f"{parsed.scheme}://{host}" + (f":{port}" if port is not None else "")


def parse_peers(body: bytes, cluster: str) -> list[Peer]:
    """The peers of an authenticated answer; AuthenticationError if it is of another cluster."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise AuthenticationError("answer is not JSON") from None
    if not isinstance(document, dict) or document.get("cluster") != cluster:
        raise AuthenticationError("answer from another cluster")
    entries = [document.get("local"), *(document.get("peers") or [])]
    peers: list[Peer] = []
    for entry in entries:
        if not isinstance(entry, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
        ):
            log.debug("ignoring a malformed peer entry")
            continue
        try:
            peer = peer_from_fields(entry)
        except ValueError as exc:
            log.debug("ignoring a peer entry: %s", exc)
            continue
        if peer.cluster == cluster:
            peers.append(peer)
    return peers


def _unverified_tls() -> ssl.SSLContext:
    """TLS without certificate checks: trust comes from the HMAC, not from the transport."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def fetch_peers(
    url: str,
    key: bytes,
    cluster: str,
    *,
    request_timeout: float = 3.0,
    window: float = 30,
    clock: Clock = time.time,
    local: Peer | None = None,
) -> list[Peer]:
    """Ask one peer API (``scheme://host:port``) whom it knows: itself first, then its peers.

    With ``local``, this node describes itself in the signed query string, so the seed can tell
    later callers about it.

    Raises AuthenticationError (we were refused, or the answer is forged, stale, foreign or too
    large), OSError / TimeoutError (unreachable), ValueError (bad URL).
    """
    path = PEERS_PATH
    if local is not None:
        path += "?" + urlencode(sorted(peer_to_fields(local).items()))
    nonce = new_nonce(os.urandom(16))
    headers = sign_request(key, "GET", path, b"", clock(), nonce)
    base = base_url(url)
    tls = _unverified_tls() if base.startswith("https:") else None
    try:
        response = await httpc.request(
            "GET", base + path, headers=headers, timeout=request_timeout, ssl_context=tls,
            max_body=MAX_BODY,
        )  # fmt: skip
    except httpc.HttpError as exc:
        if "larger than" in str(exc):  # httpc's words for an answer over max_body
            raise AuthenticationError("answer too large") from exc
        raise
    body = response.body
    if response.status == 401:
        reason = body.decode(errors="replace").strip()[:100]
        raise AuthenticationError(f"refused by the seed: {reason}")
    verify_response(key, nonce, response.status, body, response.headers, now=clock(), window=window)
    if response.status != 200:
        raise AuthenticationError(f"unexpected status {response.status}")
    return parse_peers(body, cluster)
