"""One HTTP/1.1 request per connection: the daemon's few clients (the Kubernetes API, seeds,
the peer API), without aiohttp.

Why not aiohttp's client: importing any part of aiohttp costs the daemon ~16 MB of resident
memory and ~0.12 CPU-seconds of start-up, a third of both (docs/performance.md, issue 14), for
a handful of requests a minute. h11 does the HTTP parsing (0.5 MB, 8 ms); asyncio's streams do
the connection and TLS. A request is bounded as a whole by ``timeout``; an answer's body by
``max_body``. No redirects, no cookies, no proxies: the daemon's peers and its local apiserver
need none (the installer's downloads, which do, keep aiohttp in their own process).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

READ_SIZE = 65536
MAX_HEAD = 64 * 1024  # status line + headers of an answer


class HttpError(OSError):
    """The exchange failed below HTTP's status codes: refused, reset, a malformed or oversized
    answer. An OSError, so callers that handle an unreachable peer handle this too."""


class Headers(Mapping[str, str]):
    """Header fields by case-insensitive name; repeated fields joined with ", "."""

    def __init__(self, items: Mapping[str, str] | list[tuple[str, str]] | None = None) -> None:
        pairs = items.items() if isinstance(items, Mapping) else (items or [])
        self._d: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            self._d[key] = f"{self._d[key]}, {value}" if key in self._d else value

    def __getitem__(self, name: str) -> str:
        return self._d[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Headers
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON (ValueError if it is not)."""
        return json.loads(self.body)


async def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 3.0,  # noqa: ASYNC109 - the bound of the whole exchange, as the callers expect
    ssl_context: ssl.SSLContext | None = None,
    unix_socket: str | None = None,
    max_body: int = 1 << 20,
) -> Response:
    """Send one request and read its whole answer, within ``timeout`` seconds in all.

    ``https://`` uses ``ssl_context`` (the system's roots when None); ``unix_socket`` connects
    there instead of the URL's host, which then only names the Host header.
    TimeoutError when ``timeout`` passes, HttpError/OSError when the exchange fails.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https" and unix_socket is None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = [("Host", parts.netloc), ("User-Agent", "k3snoded"), ("Connection", "close")]
    head += [(k, v) for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        head.append(("Content-Length", str(len(body))))
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            if unix_socket is not None:
                reader, writer = await asyncio.open_unix_connection(unix_socket)
            else:
                context = (ssl_context or _default_context()) if tls else None
                reader, writer = await asyncio.open_connection(
                    parts.hostname,
                    port,
                    ssl=context,
                    server_hostname=parts.hostname if context is not None else None,
                )
            return await _exchange(
                reader,
                writer,
                h11.Request(method=method, target=target, headers=head),
                body,
                max_body,
            )
    finally:
        if writer is not None:
            writer.close()  # not awaited: the answer is complete, or the exchange has failed


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    req: h11.Request,
    body: bytes,
    max_body: int,
) -> Response:
    conn = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    try:
        out = conn.send(req) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        writer.write(out)
        await writer.drain()
        answer: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_SIZE))
            elif isinstance(event, h11.Response):
                answer = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:
                    raise HttpError(f"answer larger than {max_body} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage) and answer is not None:
                fields = [(n.decode("ascii"), v.decode("latin-1")) for n, v in answer.headers]
                return Response(answer.status_code, Headers(fields), b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError("connection closed before a complete answer")
            # InformationalResponse (100 Continue, ...): keep reading
    except h11.ProtocolError as exc:
        raise HttpError(f"malformed answer: {exc}") from exc


_DEFAULT: list[ssl.SSLContext] = []


def _default_context() -> ssl.SSLContext:
    """The system's roots, loaded on first use (it costs ~3 MB and ~40 ms)."""
    if not _DEFAULT:
        _DEFAULT.append(ssl.create_default_context())
    return _DEFAULT[0]
