"""The peer-API listener under abuse: connection caps, short timeouts, small bodies.

The peer API listens on the LAN for anyone, so what a stranger can make it hold must be bounded
before any signature is checked:

- **Connections**: at most ``max_connections`` at once, and at most ``max_per_source`` from one
  address; a connection over either cap is reset at once (``PeerSite``). One machine opening
  1,000 connections gets ``max_per_source`` of them; peers keep theirs.
- **Time**: ``keepalive_timeout`` (5 s) closes a connection that has not sent a complete request
  head within that time of opening or of its last answer (aiohttp arms the keep-alive timer at
  connect, so it is also the header timeout), and a body must arrive within ``BODY_TIMEOUT``.
- **Size**: a body of more than ``MAX_BODY`` bytes is refused (413) from its Content-Length,
  before anything is read; a GET or HEAD with a body is refused (400); request lines and headers
  are limited by aiohttp (8 KiB each, 128 headers).

``serve(app, host, port)`` runs an application with these limits; the daemon's peer listener
(``api.py``) and the discovery runner both use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from k3snoded.ratelimit import OncePerKey

log = logging.getLogger(__name__)

MAX_BODY = 4096  # bytes; peer-API requests are GETs without a body
BODY_TIMEOUT = 5.0  # seconds to receive a (small) body
KEEPALIVE_TIMEOUT = 5.0  # seconds: idle connections, and the time to send a request head
MAX_CONNECTIONS = 256
MAX_PER_SOURCE = 32

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Admission:
    """Counts open connections, in all and per source address."""

    def __init__(self, max_connections: int, max_per_source: int) -> None:
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.by_source: Counter[str] = Counter()
        self.refused = 0
        self._once = OncePerKey(log, "peer-API connections refused")

    @property
    def open(self) -> int:
        return self.by_source.total()

    def admit(self, source: str) -> bool:
        if self.open >= self.max_connections:
            why = f"{self.max_connections} connections are open"
        elif self.by_source[source] >= self.max_per_source:
            why = f"{source} has {self.max_per_source} connections open"
        else:
            self.by_source[source] += 1
            return True
        self.refused += 1
        self._once((source, why.split()[0]), "refusing a peer-API connection from %s: %s",
                   source, why)  # fmt: skip
        return False

    def release(self, source: str) -> None:
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]


class _Guard(asyncio.Protocol):
    """Admits a connection (or resets it) before aiohttp's handler sees a byte."""

    def __init__(self, inner: asyncio.Protocol, admission: Admission) -> None:
        self._inner = inner
        self._admission = admission
        self._source: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        if not self._admission.admit(source):
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # RST: nothing is kept for it
            else:
                transport.close()
            return
        self._source = source
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._source is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._source is not None else None

    def pause_writing(self) -> None:
        if self._source is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._source is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._source is not None:
            self._admission.release(self._source)
            self._source = None
            self._inner.connection_lost(exc)


class PeerSite(web.TCPSite):
    """A TCPSite whose connections pass :class:`Admission` first."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_per_source: int = MAX_PER_SOURCE,
        reuse_address: bool | None = None,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=reuse_address)
        self.admission = Admission(max_connections, max_per_source)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Guard(server(), self.admission),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


@web.middleware
async def limit_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 for a declared body over MAX_BODY, 400 for a GET/HEAD with a body: before reading."""
    length = request.content_length
    if request.method in ("GET", "HEAD") and (request.body_exists or length):
        return web.Response(status=400, text="a GET carries no body\n")
    if length is not None and length > MAX_BODY:
        return web.Response(status=413, text=f"body over {MAX_BODY} bytes\n")
    return await handler(request)


async def read_body(request: web.Request) -> bytes:
    """The request body, at most MAX_BODY bytes, within BODY_TIMEOUT; HTTPException otherwise."""
    if not request.body_exists:
        return b""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            body = await request.content.read(MAX_BODY + 1)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="body too slow\n") from None
    if len(body) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(body))
    return body


def application(**kwargs: Any) -> web.Application:
    """An application with the body limits (aiohttp's own limit set to MAX_BODY too)."""
    return web.Application(client_max_size=MAX_BODY, middlewares=[limit_bodies], **kwargs)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    reuse_address: bool | None = None,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    max_per_source: int = MAX_PER_SOURCE,
) -> tuple[web.AppRunner, PeerSite]:
    """Start ``app`` on host:port with every limit above; clean up with ``runner.cleanup()``."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive_timeout)
    await runner.setup()
    site = PeerSite(
        runner,
        host,
        port,
        reuse_address=reuse_address,
        max_connections=max_connections,
        max_per_source=max_per_source,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site
