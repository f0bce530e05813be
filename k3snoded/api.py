"""The daemon's HTTP surfaces (aiohttp, embedded with AppRunner).

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
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from k3snoded.discovery import listener
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
        peer_setup: Iterable[Callable[[web.Application], None]] = (),
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
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        local = web.Application()
        local.router.add_get("/v1/status", self._get_status)
        local.router.add_get("/metrics", self._get_metrics)
        local.router.add_post("/v1/leave", self._post_leave)
        local.router.add_post("/v1/ops", self._post_ops)
        runner = web.AppRunner(local, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        make_private(self._socket_path.parent)  # never a shared directory (rundir.py)
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()
        old = os.umask(0o177)
        try:
            await web.UnixSite(runner, str(self._socket_path)).start()
        finally:
            os.umask(old)
        os.chmod(self._socket_path, 0o600)
        if self._listen:
            # Open to the LAN: connection caps, short timeouts, small bodies (listener.py).
            peer = listener.application()
            peer.router.add_get("/healthz", self._get_healthz)
            peer.router.add_get("/livez", self._get_livez)
            peer.router.add_get("/metrics", self._get_metrics)
            for setup in self._peer_setup:
                setup(peer)
            host, port = _split_listen(self._listen)
            prunner, _ = await listener.serve(peer, host, port, reuse_address=True)
            self._runners.append(prunner)
            log.info("peer API listening on %s", self._listen)

    async def close(self) -> None:
        while self._runners:
            await self._runners.pop().cleanup()
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()

    async def _get_status(self, _: web.Request) -> web.Response:
        return web.json_response(self._status(), dumps=lambda o: json.dumps(o, sort_keys=True))

    async def _post_leave(self, _: web.Request) -> web.Response:
        if self._leave is None:
            return web.json_response({"error": "leave is not supported"}, status=501)
        await self._leave()
        return web.json_response({"leaving": True}, status=202)

    async def _post_ops(self, request: web.Request) -> web.Response:
        """A planned operation asked on this machine (``k3snoded pause`` and friends)."""
        from k3snoded.ops_api import check_request

        if self._ops is None:
            return web.json_response({"ok": False, "why": "not supported here"}, status=501)
        req = check_request(await request.read())
        if isinstance(req, str):
            return web.json_response({"ok": False, "why": req}, status=400)
        return web.json_response(await self._ops(req))

    async def _get_metrics(self, _: web.Request) -> web.Response:
        return web.Response(text=self._metrics(), content_type="text/plain", charset="utf-8")

    async def _get_healthz(self, _: web.Request) -> web.Response:
        ok = self._healthy()
        text = "ok\n" if ok else "not a ready k3s server\n"
        return web.Response(status=200 if ok else 503, text=text)

    async def _get_livez(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")


async def _local_call(socket_path: Path, method: str, path: str, limit: float) -> dict[str, Any]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=limit)
    ) as session:
        try:
            async with session.request(method, f"http://k3snoded{path}") as resp:
                resp.raise_for_status()
                data: dict[str, Any] = await resp.json()
                return data
        except aiohttp.ClientError as err:
            raise OSError(str(err)) from err


async def fetch_status(socket_path: Path, limit: float = 5.0) -> dict[str, Any]:
    """Read ``/v1/status`` from a running daemon over its unix socket."""
    return await _local_call(socket_path, "GET", "/v1/status", limit)


async def request_ops(socket_path: Path, req: dict[str, Any], limit: float) -> dict[str, Any]:
    """Ask the local daemon for a planned operation (``k3snoded pause`` and friends)."""
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=limit)
    ) as session:
        try:
            async with session.post("http://k3snoded/v1/ops", json=req) as resp:
                data: dict[str, Any] = await resp.json(content_type=None)
                return data
        except (aiohttp.ClientError, ValueError) as err:
            raise OSError(str(err)) from err


async def request_leave(socket_path: Path, limit: float = 5.0) -> dict[str, Any]:
    """Ask the daemon to hand over and leave the fleet (``k3snoded leave``)."""
    return await _local_call(socket_path, "POST", "/v1/leave", limit)
