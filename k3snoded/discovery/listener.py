"""The peer-API listener: what a stranger on the LAN can make it hold is bounded.

The peer API listens on the LAN for anyone, so its limits apply before any signature is
checked (``httpd.Limits``, enforced by ``httpd.Server``):

- **Connections**: at most ``MAX_CONNECTIONS`` at once, and at most ``MAX_PER_SOURCE`` from one
  address; a connection over either cap is reset at once. One machine opening 1,000
  connections gets ``MAX_PER_SOURCE`` of them; peers keep theirs.
- **Time**: ``KEEPALIVE_TIMEOUT`` (5 s) closes a connection that has not sent a complete request
  head within that time of opening or of its last answer, and a body must arrive within
  ``BODY_TIMEOUT``.
- **Size**: a body of more than ``MAX_BODY`` bytes is refused (413) from its Content-Length,
  before anything is read; a GET or HEAD with a body is refused (400); a request head over
  8 KiB is refused (431).

``serve(router, host, port)`` runs a router with these limits; the daemon's peer listener
(``api.py``) and the discovery runner both use it.
"""

from __future__ import annotations

from k3snoded.httpd import Admission, Limits, Router, Server

__all__ = ["Admission", "application", "serve"]

MAX_BODY = 4096  # bytes; peer-API requests are GETs and small signed POSTs
BODY_TIMEOUT = 5.0  # seconds to receive a (small) body
KEEPALIVE_TIMEOUT = 5.0  # seconds: idle connections, and the time to send a request head
MAX_CONNECTIONS = 256
MAX_PER_SOURCE = 32


def application() -> Router:
    """A router for the peer API (the limits come with ``serve``)."""
    return Router()


async def serve(
    router: Router,
    host: str,
    port: int,
    *,
    reuse_address: bool | None = None,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    max_per_source: int = MAX_PER_SOURCE,
) -> Server:
    """Start ``router`` on host:port with every limit above; stop it with ``close()``."""
    limits = Limits(
        max_body=MAX_BODY,
        head_timeout=keepalive_timeout,
        body_timeout=BODY_TIMEOUT,
        max_connections=max_connections,
        max_per_source=max_per_source,
    )
    server = Server(router, limits)
    await server.start_tcp(host, port, reuse_address=reuse_address)
    return server
