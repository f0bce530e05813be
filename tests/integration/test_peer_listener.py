"""The peer-API listener under abuse, on loopback: body limits, caps, timeouts (listener.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest

from k3snoded import httpc, httpd
from k3snoded.discovery import listener
from k3snoded.discovery.peer_api import PEERS_PATH, PeerApi, fetch_peers
from k3snoded.discovery.signing import derive_key, new_nonce, sign_request
from k3snoded.model import Peer, Role

KEY = derive_key("s3cret", "lab")
N1 = Peer("n1", "lab", ("198.18.0.11",), 6480, Role.SERVER)


@pytest.fixture
async def site() -> AsyncIterator[tuple[str, int, httpd.Server]]:
    app = listener.application()
    PeerApi(KEY, "lab", lambda: [], lambda: N1).install(app)

    async def post(request: httpd.Request) -> httpd.Response:
        return httpd.text(f"{len(request.body)}\n")

    app.add_post("/echo", post)
    server = await listener.serve(
        app, "127.0.0.1", 0, keepalive_timeout=0.5, max_connections=40, max_per_source=8
    )
    try:
        yield "127.0.0.1", server.port, server
    finally:
        await server.close()


async def _exchange(host: str, port: int, request: bytes, source: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_an_oversized_body_is_refused_from_its_length(
    site: tuple[str, int, httpd.Server],
) -> None:
    host, port, _ = site
    head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {10 << 20}\r\n\r\n".encode()
    t0 = time.monotonic()
    answer = await _exchange(host, port, head)  # no body sent at all: answered from the head
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert time.monotonic() - t0 < 2
    chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"2000\r\n" + b"x" * 0x2000 + b"\r\n0\r\n\r\n"
    assert (await _exchange(host, port, chunked)).startswith(b"HTTP/1.1 413")
    small = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    assert (await _exchange(host, port, small)).endswith(b"5\n")


async def test_a_get_with_a_body_is_refused(site: tuple[str, int, httpd.Server]) -> None:
    host, port, _ = site
    get = f"GET {PEERS_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd".encode()
    assert (await _exchange(host, port, get)).startswith(b"HTTP/1.1 400")


async def test_a_slow_request_head_is_cut_off(site: tuple[str, int, httpd.Server]) -> None:
    host, port, _ = site
    reader, writer = await asyncio.open_connection(host, port)
    t0 = time.monotonic()
    closed_after = None
    try:
        for byte in b"GET /v1/peers HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxxx":
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    closed_after = time.monotonic() - t0
                    break
    except ConnectionError:
        closed_after = time.monotonic() - t0
    finally:
        writer.close()
    assert closed_after is not None and closed_after < 3, "a trickled head was not cut off"


async def test_connection_caps_per_source_and_in_all(
    site: tuple[str, int, httpd.Server],
) -> None:
    host, port, peer_site = site
    hogs: list[socket.socket] = []
    try:
        for _ in range(20):  # one source: 8 are admitted, the rest reset
            s = socket.create_connection((host, port), source_address=("127.0.0.2", 0))
            hogs.append(s)
        await asyncio.sleep(0.2)
        assert peer_site.admission.by_source["127.0.0.2"] == 8
        assert peer_site.admission.refused >= 12
        # Another source is still answered, signed, while the first one is capped.
        peers = await fetch_peers(f"http://{host}:{port}", KEY, "lab")
        assert peers[0].name == "n1"
    finally:
        for s in hogs:
            s.close()
    await asyncio.sleep(0.2)
    assert peer_site.admission.open == 0, "closed connections must be released"


def test_admission_counts_and_releases() -> None:
    adm = listener.Admission(max_connections=3, max_per_source=2)
    assert adm.admit("a") and adm.admit("a") and not adm.admit("a")
    assert adm.admit("b") and not adm.admit("c")  # 3 in all
    adm.release("a")
    assert adm.admit("c") and adm.open == 3


async def test_refusals_with_ever_new_reasons_do_not_flood_the_log(
    site: tuple[str, int, httpd.Server], caplog: pytest.LogCaptureFixture
) -> None:
    """Stale timestamps make every refusal's text different ("stale request: 412 s old"):
    still only a handful of lines."""
    host, port, _ = site
    caplog.set_level(logging.WARNING, logger="k3snoded.discovery.peer_api")
    for age in range(100, 400):
        headers = sign_request(KEY, "GET", PEERS_PATH, b"", time.time() - age,
                               new_nonce(os.urandom(16)))  # fmt: skip
        r = await httpc.request("GET", f"http://{host}:{port}{PEERS_PATH}", headers=headers)
        assert r.status == 401
    lines = [r for r in caplog.records if "refused peer-API request" in r.getMessage()]
    assert 1 <= len(lines) <= 10, len(lines)
