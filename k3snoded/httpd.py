"""A small HTTP/1.1 server on asyncio streams, parsed by h11 (docs/decisions/0010).

The daemon serves two things over HTTP: the root-only unix status socket and the peer API on
the LAN. Neither needs more than routing by method and path, small bodies and short answers,
so this replaces aiohttp's server (14-16 MB and ~0.1 CPU-s of imports) with h11's parser.

What a client can make a :class:`Server` hold is bounded before any handler runs (a stranger
on the LAN, issue 13), by its :class:`Limits`:

- **Connections**: at most ``max_connections`` at once and ``max_per_source`` from one address;
  a connection over either cap is reset at once (:class:`Admission`).
- **Time**: a request head must arrive within ``head_timeout`` of the connection's opening or of
  its last answer (so it is also the keep-alive timeout); a body within ``body_timeout``; an
  answer must be taken within ``head_timeout``.
- **Size**: a head of more than ``max_head`` bytes gets 431 (h11); a body declared longer than
  ``max_body`` gets 413 before anything is read, a chunked one as soon as it is; a GET or HEAD
  with a body gets 400. A connection whose request body was not read is closed after the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11

from k3snoded.httpc import Headers
from k3snoded.ratelimit import OncePerKey

log = logging.getLogger(__name__)

_READ = 1 << 16
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(frozen=True)
class Limits:
    max_body: int = 4096
    max_head: int = 8192
    head_timeout: float = 5.0
    body_timeout: float = 5.0
    max_connections: int = 256
    max_per_source: int = 32


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # the path with its query string, as sent
    headers: Headers
    remote: str  # the client's address ("unix" on the unix socket)
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


def text(body: str, status: int = 200) -> Response:
    return Response(status, body.encode())


def json_response(document: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(document, sort_keys=True).encode(), "application/json")


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Handlers by method and exact path; a GET route answers HEAD too."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.routes[method, path] = handler

    def add_get(self, path: str, handler: Handler) -> None:
        self.add("GET", path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self.add("POST", path, handler)

    def find(self, method: str, path: str) -> Handler | Response:
        handler = self.routes.get(("GET" if method == "HEAD" else method, path))
        if handler is not None:
            return handler
        if any(p == path for _, p in self.routes):
            return text("method not allowed\n", 405)
        return text("not found\n", 404)


class Admission:
    """Counts open connections, in all and per source address."""

    def __init__(self, max_connections: int, max_per_source: int) -> None:
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.by_source: Counter[str] = Counter()
        self.refused = 0
        self._once = OncePerKey(log, "HTTP connections refused")

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
        self._once((source, why.split()[0]), "refusing an HTTP connection from %s: %s",
                   source, why)  # fmt: skip
        return False

    def release(self, source: str) -> None:
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class Server:
    """Serves a :class:`Router` on TCP (``start_tcp``) or a unix socket (``start_unix``)."""

    def __init__(self, router: Router, limits: Limits | None = None) -> None:
        self.router = router
        self.limits = limits or Limits()
        self.admission = Admission(self.limits.max_connections, self.limits.max_per_source)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        # Read no more than a head's limit at a time: h11 refuses an incomplete head over the
        # limit, but parses a complete one of any size that arrives in one read.
        self._read_size = self.limits.max_head

    async def start_tcp(self, host: str, port: int, *, reuse_address: bool | None = None) -> None:
        self._server = await asyncio.start_server(
            self._connected, host, port, reuse_address=reuse_address, limit=_READ
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def start_unix(self, path: str, mode: int = 0o600) -> None:
        old = os.umask(0o777 & ~mode)
        try:
            self._server = await asyncio.start_unix_server(self._connected, path, limit=_READ)
        finally:
            os.umask(old)
        os.chmod(path, mode)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "unix"
        if not self.admission.admit(source):
            writer.transport.abort()  # RST: nothing is kept for it
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer, source)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            self.admission.release(source)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     source: str) -> None:  # fmt: skip
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        while True:
            head = False
            try:
                async with asyncio.timeout(self.limits.head_timeout):
                    event = await _next_event(conn, reader, self._read_size)
                if not isinstance(event, h11.Request):
                    return  # closed by the client
                head = event.method == b"HEAD"
                response = await self._answer(conn, reader, event, source)
            except h11.RemoteProtocolError as exc:
                response = text(f"{exc}\n", exc.error_status_hint)
            except _Refused as refused:
                response = refused.response
            if not await self._send(conn, writer, response, head_only=head):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      event: h11.Request, source: str) -> Response:  # fmt: skip
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("ascii", "replace")
        headers = Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers])
        try:
            length = int(headers.get("content-length", "0"))  # h11 checked it is one number
        except ValueError:
            return text("bad Content-Length\n", 400)
        has_body = length > 0 or "transfer-encoding" in headers
        if has_body and method in ("GET", "HEAD"):
            return text("a GET carries no body\n", 400)
        if length > self.limits.max_body:
            return text(f"body over {self.limits.max_body} bytes\n", 413)
        found = self.router.find(method, target.partition("?")[0])
        if isinstance(found, Response):
            return found
        body = await self._body(conn, reader) if has_body else b""
        if not has_body:
            await _next_event(conn, reader, self._read_size)  # EndOfMessage, already parsed
        request = Request(method, target, headers, source, body)
        try:
            return await found(request)
        except Exception:
            log.exception("HTTP handler for %s %s failed", method, request.path)
            return text("internal error\n", 500)

    async def _body(self, conn: h11.Connection, reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while True:
                    event = await _next_event(conn, reader, self._read_size)
                    if isinstance(event, h11.EndOfMessage):
                        return b"".join(chunks)
                    if not isinstance(event, h11.Data):
                        raise ConnectionResetError("the client went away mid-body")
                    size += len(event.data)
                    if size > self.limits.max_body:
                        raise _Refused(text(f"body over {self.limits.max_body} bytes\n", 413))
                    chunks.append(event.data)
        except TimeoutError:
            raise _Refused(text("body too slow\n", 408)) from None

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                    response: Response, *, head_only: bool = False) -> bool:  # fmt: skip
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False
        headers = [("content-type", response.content_type), *response.headers.items()]
        if conn.their_state is not h11.DONE:
            headers.append(("connection", "close"))  # the rest of the request is not read
        headers.append(("content-length", str(len(response.body))))
        try:
            reason = _REASONS.get(response.status, b"")
            data = conn.send(
                h11.Response(status_code=response.status, headers=headers, reason=reason)
            )
            if response.body and not head_only:  # h11 expects no body after HEAD
                data += conn.send(h11.Data(data=response.body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            log.debug("cannot answer: %s", exc)
            return False
        writer.write(data)
        async with asyncio.timeout(self.limits.head_timeout):
            await writer.drain()
        return True


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, size: int) -> Any:
    """The next h11 event, reading from the stream as needed (ConnectionClosed at EOF)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(size))
            continue
        return event
