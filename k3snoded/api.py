"""The daemon's HTTP surfaces (``httpd.py``: h11 on asyncio streams).

* A unix socket in ``run_dir`` (directory 0700, socket 0600, root only): ``GET /v1/status``,
  what ``k3snoded status`` reads.
* A TCP listener (``api.listen``) for peers and load balancers: ``GET /healthz`` (200 only on a
  machine that runs a ready k3s server: what a load balancer in front of the k3s API port
  wants), ``GET /livez`` (200 while the daemon's event loop answers: liveness of k3snoded
  itself, whatever the role), ``GET /metrics`` (Prometheus text) and the signed peer routes
  discovery mounts. Nothing secret is served there (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from k3snoded import httpc
from k3snoded.discovery import listener
from k3snoded.httpd import Limits, Request, Response, Router, Server, json_response, text
from k3snoded.rundir import make_private

log = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, Any]]


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class ApiServer:
    """Owns both listeners; ``start`` then ``close`` (idempotent)."""

    def __init__(
        self,
        *,
        socket_path: Path,
        status: StatusFn,
        metrics: Callable[[], str],
        healthy: Callable[[], bool],
        listen: str = "",
        peer_setup: Iterable[Callable[[Router], None]] = (),
        leave: Callable[[], Awaitable[None]] | None = None,
        ops: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self._socket_path = socket_path
        self._status = status
        self._metrics = metrics
        self._healthy = healthy
        self._listen = listen
        self._peer_setup = list(peer_setup)
        self._leave = leave
        self._ops = ops
        self._servers: list[Server] = []

    async def start(self) -> None:
        local = Router()
        local.add_get("/v1/status", self._get_status)
        local.add_get("/metrics", self._get_metrics)
        local.add_post("/v1/leave", self._post_leave)
        local.add_post("/v1/ops", self._post_ops)
        make_private(self._socket_path.parent)  # never a shared directory (rundir.py)
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()
        # Root only (0600); a status answer may be large, a request is a small JSON object.
        server = Server(local, LOCAL_LIMITS)
        await server.start_unix(str(self._socket_path), 0o600)
        self._servers.append(server)
        if self._listen:
            # Open to the LAN: connection caps, short timeouts, small bodies (listener.py).
            peer = listener.application()
            peer.add_get("/healthz", self._get_healthz)
            peer.add_get("/livez", self._get_livez)
            peer.add_get("/metrics", self._get_metrics)
            for setup in self._peer_setup:
                setup(peer)
            host, port = _split_listen(self._listen)
            self._servers.append(await listener.serve(peer, host, port, reuse_address=True))
            log.info("peer API listening on %s", self._listen)

    async def close(self) -> None:
        while self._servers:
            await self._servers.pop().close()
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()

    async def _get_status(self, _: Request) -> Response:
        return json_response(self._status())

    async def _post_leave(self, _: Request) -> Response:
        if self._leave is None:
            return json_response({"error": "leave is not supported"}, 501)
        await self._leave()
        return json_response({"leaving": True}, 202)

    async def _post_ops(self, request: Request) -> Response:
        """A planned operation asked on this machine (``k3snoded pause`` and friends)."""
        from k3snoded.ops_api import check_request

        if self._ops is None:
            return json_response({"ok": False, "why": "not supported here"}, 501)
        req = check_request(request.body)
        if isinstance(req, str):
            return json_response({"ok": False, "why": req}, 400)
        return json_response(await self._ops(req))

    async def _get_metrics(self, _: Request) -> Response:
        return text(self._metrics())

    async def _get_healthz(self, _: Request) -> Response:
        ok = self._healthy()
        return text("ok\n" if ok else "not a ready k3s server\n", 200 if ok else 503)

    async def _get_livez(self, _: Request) -> Response:
        return text("ok\n")


LOCAL_LIMITS = Limits(max_body=64 * 1024, head_timeout=30.0, body_timeout=10.0,
                      max_connections=64, max_per_source=64)  # fmt: skip
MAX_LOCAL_ANSWER = 16 << 20  # a status document of a large fleet


async def _local_call(socket_path: Path, method: str, path: str, limit: float,
                      body: bytes = b"") -> httpc.Response:  # fmt: skip
    """One request to the daemon's unix socket; OSError (or TimeoutError) when it fails."""
    headers = {"Content-Type": "application/json"} if body else None
    return await httpc.request(
        method, f"http://k3snoded{path}", headers=headers, body=body, timeout=limit,
        unix_socket=str(socket_path), max_body=MAX_LOCAL_ANSWER,
    )  # fmt: skip


async def _local_json(socket_path: Path, method: str, path: str, limit: float) -> dict[str, Any]:
    resp = await _local_call(socket_path, method, path, limit)
    if resp.status >= 400:
        raise OSError(f"{resp.status}, message={resp.text().strip()!r}")
    return _document(resp)


def _document(resp: httpc.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError as err:
        raise OSError(f"the daemon answered {resp.status} without JSON") from err
    if not isinstance(data, dict):
        raise OSError(f"the daemon answered {resp.status} with a JSON {type(data).__name__}")
    return data


async def fetch_status(socket_path: Path, limit: float = 5.0) -> dict[str, Any]:
    """Read ``/v1/status`` from a running daemon over its unix socket."""
    return await _local_json(socket_path, "GET", "/v1/status", limit)


async def request_ops(socket_path: Path, req: dict[str, Any], limit: float) -> dict[str, Any]:
    """Ask the local daemon for a planned operation (``k3snoded pause`` and friends)."""
    body = json.dumps(req).encode()
    return _document(await _local_call(socket_path, "POST", "/v1/ops", limit, body))


async def request_leave(socket_path: Path, limit: float = 5.0) -> dict[str, Any]:
    """Ask the daemon to hand over and leave the fleet (``k3snoded leave``)."""
    return await _local_json(socket_path, "POST", "/v1/leave", limit)
