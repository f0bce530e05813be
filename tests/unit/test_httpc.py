"""k3snoded.httpc against real sockets: a loopback server that answers with canned bytes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from k3snoded import httpc

Handler = Callable[[bytes], bytes | None]


@asynccontextmanager
async def server(
    answer: Handler, unix: Path | None = None
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server that reads one request head (+ body by Content-Length) and writes answer(head)."""
    seen: list[bytes] = []
    handlers: set[asyncio.Task[object]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        seen.append(head + (await reader.readexactly(length) if length else b""))
        out = answer(head)
        if out is None:  # never answer
            await asyncio.sleep(30)
        else:
            writer.write(out)
            await writer.drain()
        writer.close()

    if unix is None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
    else:
        srv = await asyncio.start_unix_server(handle, str(unix))
        url = "http://localhost"
    async with srv:
        try:
            yield url, seen
        finally:  # a handler still waiting (the silent peer) ends with its test, not at GC
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)


async def test_a_json_answer_with_its_status_headers_and_body() -> None:
    body = b'{"ok": true}'
    canned = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-A: 1\r\nX-A: 2\r\n"
    canned += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    async with server(lambda _: canned) as (url, seen):
        resp = await httpc.request(
            "PATCH",
            url + "/api/v1/nodes/n1?x=1",
            headers={"Accept": "application/json"},
            body=b"{}",
        )
    assert resp.status == 201
    assert resp.json() == {"ok": True}
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-a"] == "1, 2"
    request = seen[0]
    assert request.startswith(b"PATCH /api/v1/nodes/n1?x=1 HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 2\r\n" in request and request.endswith(b"\r\n\r\n{}")
    assert b"\r\nAccept: application/json\r\n" in request


async def test_a_chunked_answer_and_one_ended_by_close() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    async with server(lambda _: chunked) as (url, _):
        assert (await httpc.request("GET", url)).body == b"abcde"
    by_close = b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    async with server(lambda _: by_close) as (url, _):
        assert (await httpc.request("GET", url)).text() == "until the end"


async def test_an_oversized_answer_is_an_error_not_a_truncated_body() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    async with server(lambda _: big) as (url, _):
        with pytest.raises(httpc.HttpError, match="larger than 1000"):
            await httpc.request("GET", url, max_body=1000)


async def test_a_peer_that_closes_mid_answer_or_talks_garbage_is_an_oserror() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort"
    async with server(lambda _: cut) as (url, _):
        with pytest.raises(OSError, match=r"closed|malformed"):
            await httpc.request("GET", url)
    async with server(lambda _: b"SSH-2.0-OpenSSH\r\n\r\n") as (url, _):
        with pytest.raises(httpc.HttpError, match="malformed"):
            await httpc.request("GET", url)


async def test_a_refused_connection_is_an_oserror() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(OSError):
        await httpc.request("GET", f"http://127.0.0.1:{port}/")


async def test_a_silent_peer_costs_the_timeout_and_no_more() -> None:
    async with server(lambda _: None) as (url, _):
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await httpc.request("GET", url, timeout=0.3)
        assert time.monotonic() - start < 2.0


async def test_a_unix_socket(tmp_path: Path) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with server(lambda _: ok, unix=tmp_path / "s") as (url, seen):
        resp = await httpc.request("GET", url + "/v1/status", unix_socket=str(tmp_path / "s"))
    assert resp.body == b"ok"
    assert seen[0].startswith(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n")


async def test_not_an_http_url() -> None:
    with pytest.raises(ValueError):
        await httpc.request("GET", "ftp://example.invalid/")
