"""Seed discovery against real HTTP servers (httpd.py) on loopback (free ports)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from k3snoded import httpc
from k3snoded.discovery.peer_api import PEERS_PATH, PeerApi, base_url, fetch_peers
from k3snoded.discovery.seed import SeedDiscovery
from k3snoded.discovery.signing import derive_key, new_nonce, sign_request, sign_response
from k3snoded.errors import AuthenticationError
from k3snoded.httpd import Request, Response, Router, Server
from k3snoded.model import Peer, Role

KEY = derive_key("s3cret", "lab")
N1 = Peer("n1", "lab", ("198.18.0.11",), 6480, Role.SERVER, "198.18.0.100")
N2 = Peer("n2", "lab", ("198.18.0.12",), 6480, Role.AGENT)
FOREIGN = Peer("x9", "other", ("198.18.0.99",), 6480, Role.SERVER)

Serve = Callable[[Router], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[Server] = []

    async def start(router: Router) -> str:
        server = Server(router)
        await server.start_tcp("127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


def peer_app(key: bytes = KEY, cluster: str = "lab") -> tuple[Router, PeerApi]:
    api = PeerApi(key, cluster, lambda: [N1, N2, FOREIGN], lambda: N1)
    app = Router()
    api.install(app)
    return app, api


async def _get(url: str, headers: dict[str, str] | None = None) -> httpc.Response:
    return await httpc.request("GET", url, headers=headers)


async def test_signed_request_learns_the_seed_and_its_peers(serve: Serve) -> None:
    app, api = peer_app()
    url = await serve(app)
    async with SeedDiscovery([url], KEY, "lab", local=N2) as seeds:
        assert await seeds.refresh() == 1
        # n2 is ourselves; the other cluster's peer is never passed on
        assert seeds.peers() == {"n1": N1}
    got = await fetch_peers(url + "/", KEY, "lab")
    assert got == [N1, N2]
    assert api.rejected == 0


async def test_polling_task_finds_peers(serve: Serve) -> None:
    app, _ = peer_app()
    url = await serve(app)
    async with SeedDiscovery([url], KEY, "lab", interval=0.05) as seeds:
        await asyncio.wait_for(seeds.changed.wait(), 5)
        assert set(seeds.peers()) == {"n1", "n2"}


@pytest.mark.parametrize(
    ("client_key", "cluster"),
    [(derive_key("wrong", "lab"), "lab"), (derive_key("s3cret", "other"), "other")],
)
async def test_wrong_key_is_refused_and_nothing_learned(
    serve: Serve, client_key: bytes, cluster: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, api = peer_app()
    url = await serve(app)
    caplog.set_level(logging.INFO)
    async with SeedDiscovery([url], client_key, cluster) as seeds:
        assert await seeds.refresh() == 0
        assert await seeds.refresh() == 0
        assert seeds.peers() == {}
    assert api.rejected >= 2  # the polling task asks once at start, too
    server_logs = [r for r in caplog.records if "refused peer-API request" in r.getMessage()]
    client_logs = [r for r in caplog.records if r.getMessage().startswith("seed ")]
    assert len(server_logs) == 1  # logged once per source and reason
    assert "bad request signature" in server_logs[0].getMessage()
    assert len(client_logs) == 1
    assert "refused by the seed: bad request signature" in client_logs[0].getMessage()


async def test_unsigned_and_replayed_requests_are_refused(serve: Serve) -> None:
    app, api = peer_app()
    url = await serve(app)
    headers = sign_request(KEY, "GET", PEERS_PATH, b"", _now(), _nonce())
    resp = await _get(url + PEERS_PATH)
    assert resp.status == 401
    assert resp.text().strip() == "unsigned request"
    resp = await _get(url + PEERS_PATH, headers)
    assert resp.status == 200
    resp = await _get(url + PEERS_PATH, headers)
    assert resp.status == 401
    assert resp.text().strip() == "replayed request"
    # the same signature on another path is a forgery
    other = sign_request(KEY, "GET", "/v1/other", b"", _now(), _nonce())
    resp = await _get(url + PEERS_PATH, other)
    assert resp.status == 401
    assert resp.text().strip() == "bad request signature"
    stale = sign_request(KEY, "GET", PEERS_PATH, b"", _now() - 120, _nonce())
    resp = await _get(url + PEERS_PATH, stale)
    assert resp.status == 401
    assert resp.text().strip().startswith("stale request")
    assert api.rejected == 4


def _now() -> float:
    return time.time()


def _nonce() -> str:
    return new_nonce(os.urandom(16))


def fake_seed(answer: Callable[[Request], Response]) -> Router:
    async def handler(request: Request) -> Response:
        return answer(request)

    app = Router()
    app.add_get(PEERS_PATH, handler)
    return app


BODY = (
    b'{"cluster":"lab","peers":[],'
    b'"local":{"v":"1","n":"evil","c":"lab","a":"198.18.0.66","p":"6480","r":"server"}}'
)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda r: Response(body=BODY), id="unsigned"),
        pytest.param(
            lambda r: Response(
                body=BODY,
                headers=sign_response(
                    derive_key("guess", "lab"), r.headers["X-K3snoded-Nonce"], 200, BODY, _now()
                ),
            ),
            id="signed-with-another-key",
        ),
        pytest.param(
            lambda r: Response(body=BODY, headers=sign_response(KEY, _nonce(), 200, BODY, _now())),
            id="replayed-answer-to-another-request",
        ),
        pytest.param(
            lambda r: Response(
                body=BODY + b" ",
                headers=sign_response(KEY, r.headers["X-K3snoded-Nonce"], 200, BODY, _now()),
            ),
            id="altered-body",
        ),
        pytest.param(
            lambda r: Response(
                body=BODY,
                headers=sign_response(KEY, r.headers["X-K3snoded-Nonce"], 200, BODY, _now() - 300),
            ),
            id="stale-answer",
        ),
    ],
)
async def test_forged_answers_are_ignored(
    serve: Serve, answer: Callable[[Request], Response]
) -> None:
    url = await serve(fake_seed(answer))
    with pytest.raises(AuthenticationError):
        await fetch_peers(url, KEY, "lab")
    async with SeedDiscovery([url], KEY, "lab") as seeds:
        assert await seeds.refresh() == 0
        assert seeds.peers() == {}


async def test_genuine_answer_from_fake_seed_is_accepted(serve: Serve) -> None:
    """Control for the forgeries above: the same body, correctly signed, is learned."""

    def answer(r: Request) -> Response:
        return Response(
            body=BODY, headers=sign_response(KEY, r.headers["X-K3snoded-Nonce"], 200, BODY, _now())
        )

    url = await serve(fake_seed(answer))
    async with SeedDiscovery([url], KEY, "lab") as seeds:
        assert await seeds.refresh() == 1
        assert list(seeds.peers()) == ["evil"]


async def test_unreachable_seed_backs_off_and_logs_once(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = peer_app()
    good = await serve(app)
    bad = await serve(Router())  # answers 404, unsigned
    caplog.set_level(logging.WARNING)
    async with SeedDiscovery([bad, good], KEY, "lab", request_timeout=1) as seeds:
        for _ in range(3):
            assert await seeds.refresh() == 1
        assert set(seeds.peers()) == {"n1", "n2"}
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("seed ")]
    assert warnings == [f"seed {bad}: unsigned response (logged once until it changes)"]


async def test_closed_port_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.WARNING)
    async with SeedDiscovery([f"http://127.0.0.1:{port}"], KEY, "lab") as seeds:
        assert await seeds.refresh() == 0
    assert any("unreachable" in r.getMessage() for r in caplog.records)


async def test_a_seed_written_as_host_port_is_asked_over_http(serve: Serve) -> None:
    """check-config accepts ``host`` and ``host:port`` seeds (the example config says so): the
    daemon must ask them, not fail on them."""
    app, _ = peer_app()
    url = await serve(app)
    async with SeedDiscovery([url.removeprefix("http://")], KEY, "lab", local=N2) as seeds:
        assert await seeds.refresh() == 1
        assert seeds.peers() == {"n1": N1}


@pytest.mark.parametrize(
    ("seed", "want"),
    [
        ("198.18.0.5", "http://198.18.0.5:6480"),
        ("node-1.lab", "http://node-1.lab:6480"),
        ("198.18.0.5:7000", "http://198.18.0.5:7000"),
        ("[fd00::5]:7000", "http://[fd00::5]:7000"),
        ("https://n1:7000/", "https://n1:7000"),
    ],
)
def test_seed_forms_check_config_accepts(seed: str, want: str) -> None:
    assert base_url(seed) == want


@pytest.mark.parametrize("url", ["ftp://h:1", "http://", "http://h:1/path", "http://h:1/?q=1"])
def test_bad_seed_urls(url: str) -> None:
    with pytest.raises(ValueError, match="seed"):
        base_url(url)
    with pytest.raises(ValueError, match="seed"):
        SeedDiscovery([url], KEY, "lab")


N3 = Peer("n3", "lab", ("198.18.0.13",), 6480, Role.NONE)


async def test_callers_describe_themselves_and_are_passed_on(serve: Serve) -> None:
    """Seed-only discovery: n2 and n3 only know the seed n1, yet find each other through it."""
    seen: list[Peer] = []
    api = PeerApi(KEY, "lab", list, lambda: N1, on_caller=seen.append)
    app = Router()
    api.install(app)
    url = await serve(app)
    async with (
        SeedDiscovery([url], KEY, "lab", local=N2) as s2,
        SeedDiscovery([url], KEY, "lab", local=N3) as s3,
    ):
        assert await s2.refresh() == 1
        assert await s3.refresh() == 1
        assert await s2.refresh() == 1
        assert s2.peers() == {"n1": N1, "n3": N3}
        assert s3.peers() == {"n1": N1, "n2": N2}
        promoted = Peer("n2", "lab", N2.addresses, 6480, Role.SERVER, "198.18.0.100")
        s2.update(promoted)
        assert await s2.refresh() == 1
        assert await s3.refresh() == 1
        assert s3.peers()["n2"] == promoted
    assert api.callers() == {"n2": promoted, "n3": N3}
    assert seen[-1] == promoted


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("?n=n2", "bad self-description: unsupported format version"),
        ("?v=1&n=n2&c=other&a=&p=1&r=none", "self-description of another cluster"),
        ("?v=1&n=n2&n=n3&c=lab&a=&p=1&r=none", "repeated field"),
    ],
)
async def test_bad_self_descriptions_are_refused(serve: Serve, query: str, reason: str) -> None:
    app, api = peer_app()
    url = await serve(app)
    path = PEERS_PATH + query
    headers = sign_request(KEY, "GET", path, b"", _now(), _nonce())
    resp = await _get(url + path, headers)
    assert resp.status == 400
    assert resp.text().startswith(reason)
    assert api.callers() == {}


async def test_self_description_is_covered_by_the_signature(serve: Serve) -> None:
    app, api = peer_app()
    url = await serve(app)
    signed_path = PEERS_PATH + "?v=1&n=n2&c=lab&a=&p=1&r=none"
    headers = sign_request(KEY, "GET", signed_path, b"", _now(), _nonce())
    sent = signed_path.replace("r=none", "r=server")
    resp = await _get(url + sent, headers)
    assert resp.status == 401
    assert api.callers() == {}


async def test_a_peer_api_answers_its_key_and_refuses_another(serve: Serve) -> None:
    app = Router()
    PeerApi(KEY, "lab", lambda: [N2], lambda: N1).install(app)
    url = await serve(app)
    assert await fetch_peers(url, KEY, "lab") == [N1, N2]
    with pytest.raises(AuthenticationError, match="refused by the seed"):
        await fetch_peers(url, derive_key("x", "lab"), "lab")
