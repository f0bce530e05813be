"""httpd.py on real sockets (loopback TCP, a unix socket in a temporary directory): routing,
keep-alive, HEAD, the limits on heads and bodies, handler failures."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from k3snoded import httpc, httpd


async def _echo(request: httpd.Request) -> httpd.Response:
    return httpd.json_response(
        {"method": request.method, "target": request.target, "body": request.body.decode(),
         "remote": request.remote, "x": request.headers.get("X-Thing", "")}
    )  # fmt: skip


async def _boom(_: httpd.Request) -> httpd.Response:
    raise RuntimeError("a bug in a handler")


def _router() -> httpd.Router:
    router = httpd.Router()
    router.add_get("/echo", _echo)
    router.add_post("/echo", _echo)
    router.add_get("/boom", _boom)
    return router


@pytest.fixture
async def server() -> AsyncIterator[httpd.Server]:
    srv = httpd.Server(_router(), httpd.Limits(max_body=100, max_head=1024, head_timeout=1.0))
    await srv.start_tcp("127.0.0.1", 0)
    try:
        yield srv
    finally:
        await srv.close()


async def _raw(port: int, data: bytes, *, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if read_until_close:
            return await asyncio.wait_for(reader.read(), 5)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_routes_by_method_and_path(server: httpd.Server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    got = await httpc.request("GET", base + "/echo?a=1", headers={"x-thing": "y"})
    assert got.status == 200
    assert got.json() == {"method": "GET", "target": "/echo?a=1", "body": "",
                          "remote": "127.0.0.1", "x": "y"}  # fmt: skip
    posted = await httpc.request("POST", base + "/echo", body=b"hello")
    assert posted.json()["body"] == "hello"
    assert (await httpc.request("GET", base + "/nowhere")).status == 404
    assert (await httpc.request("DELETE", base + "/echo")).status == 405


async def test_a_failing_handler_answers_500_and_the_server_goes_on(
    server: httpd.Server,
) -> None:
    base = f"http://127.0.0.1:{server.port}"
    assert (await httpc.request("GET", base + "/boom")).status == 500
    assert (await httpc.request("GET", base + "/echo")).status == 200


async def test_keep_alive_serves_several_requests_on_one_connection(
    server: httpd.Server,
) -> None:
    two = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n" * 2
    two += b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await _raw(server.port, two)
    assert answer.count(b"HTTP/1.1 200") == 3


async def test_head_answers_without_a_body(server: httpd.Server) -> None:
    answer = await _raw(server.port, b"HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: " in head.lower()
    assert body == b""


async def test_an_oversized_head_is_refused(server: httpd.Server) -> None:
    big = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
    answer = await _raw(server.port, big)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:40]


async def test_garbage_is_answered_400_and_closed(server: httpd.Server) -> None:
    answer = await _raw(server.port, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:40]


async def test_a_trickled_body_is_cut_off(server: httpd.Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nab")
        await writer.drain()
        # body_timeout is 5 s by default here: the answer is 408, then the connection closes
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:40]


async def test_an_idle_connection_is_closed_after_the_head_timeout(
    server: httpd.Server,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after ~1 s
    finally:
        writer.close()
    await asyncio.sleep(0.1)
    assert server.admission.open == 0


async def test_a_unix_socket_server_is_private(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    srv = httpd.Server(_router())
    await srv.start_unix(str(path), 0o600)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        got = await httpc.request("POST", "http://k3snoded/echo", body=b"{}", unix_socket=str(path))
        assert got.json()["remote"] == "unix"
    finally:
        await srv.close()


def test_headers_are_case_insensitive_and_repeated_ones_joined() -> None:
    headers = httpc.Headers([("X-A", "1"), ("x-a", "2"), ("B", "3")])
    assert headers["x-A"] == "1, 2"
    assert headers.get("b") == "3"
    assert len(headers) == 2
