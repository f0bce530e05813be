"""The agent's client-side TCP load balancer (pkg/agent/loadbalancer, post-#11329 behaviour).

All new connections go to one active server while it passes ``/ping`` health checks and dials;
otherwise the next server in preference order becomes active (healthy servers first, the
default server last, then — if every check fails — any server that dials) and the connections
to the failed one are closed. The server list is saved to ``<agent>/etc/<name>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from pathlib import Path

import aiohttp

from tests.fakes.k3s_stub import logs

NAME = "k3s-agent-load-balancer"
HEALTH_INTERVAL = 2.0
DIAL_TIMEOUT = 2.0


def go_list(items: list[str]) -> str:
    return "[" + " ".join(items) + "]"


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class LoadBalancer:
    def __init__(self, state_file: Path, server_url: str, default: str, port: int) -> None:
        self.state_file = state_file
        self.server_url = server_url
        self.default = default
        self.port = port
        self.addresses: list[str] = []
        self.health: dict[str, bool] = {}
        self.active: str | None = None
        self.conns: dict[str, set[asyncio.StreamWriter]] = {}
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the address list ---------------------------------------------------------------
    def load(self) -> None:
        """Reuse the saved addresses when the file is for the same ``--server``."""
        with contextlib.suppress(OSError, ValueError, TypeError):
            data = json.loads(self.state_file.read_text())
            if data.get("ServerURL") == self.server_url:
                self.addresses = sorted({str(a) for a in data.get("ServerAddresses") or [] if a})
                return
        self.save()

    def save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        data = {"ServerURL": self.server_url, "ServerAddresses": self.addresses}
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state_file)

    def update(self, addresses: list[str]) -> None:
        new = sorted({a for a in addresses if a})
        if new == self.addresses:
            return
        for a in new:
            if a not in self.addresses:
                logs.info(f"Adding server to load balancer {NAME}: {a}")
        for a in self.addresses:
            if a not in new:
                logs.info(f"Removing server from load balancer {NAME}: {a}")
                self.health.pop(a, None)
                if a == self.active and a != self.default:
                    self._switch(None, "removal")
        self.addresses = new
        logs.info(
            f"Updated load balancer {NAME} server addresses -> {go_list(new)}"
            f" [default: {self.default}]"
        )
        self.save()

    def candidates(self) -> list[str]:
        """Preference order: healthy servers, the default server last, then the rest."""
        others = [a for a in self.addresses if a != self.default]
        healthy = [a for a in others if self.health.get(a, True)]
        if self.health.get(self.default, True):
            healthy.append(self.default)
        rest = [a for a in [*others, self.default] if a not in healthy]
        return healthy + rest

    # -- serving ------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        logs.info(
            f"Running load balancer {NAME} 127.0.0.1:{self.port} -> {go_list(self.addresses)}"
            f" [default: {self.default}]"
        )
        self._task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._server is not None:
            self._server.close()
        for conns in self.conns.values():
            for w in conns:
                w.close()

    def _switch(self, new: str | None, reason: str) -> None:
        old = self.active
        if old == new:
            return
        self.active = new
        if new is not None:
            logs.info(f"Server {new}@PREFERRED->ACTIVE from {reason}")
        if old is not None:
            conns = self.conns.pop(old, set())
            if conns:
                logs.info(f"Closing {len(conns)} connections to load balancer server {old}")
            for w in conns:
                w.close()

    async def _dial(self) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter] | None:
        order = self.candidates()
        if self.active is not None and self.health.get(self.active, True):
            order = [self.active] + [a for a in order if a != self.active]
        for addr in order:
            host, port = _split(addr)
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), DIAL_TIMEOUT
                )
            except (OSError, TimeoutError):
                if self.health.get(addr, True):
                    logs.debug(f"Server {addr}@RECOVERING->FAILED from failed dial")
                self.health[addr] = False
                continue
            self._switch(addr, "successful dial")
            return addr, reader, writer
        logs.error("error dialing load balancer servers: all servers failed")
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialed = await self._dial()
        if dialed is None:
            writer.close()
            return
        addr, up_reader, up_writer = dialed
        conns = self.conns.setdefault(addr, set())
        conns.add(writer)
        conns.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            conns.discard(writer)
            conns.discard(up_writer)

    # -- health checks ------------------------------------------------------------------
    async def _check(self, session: aiohttp.ClientSession, addr: str) -> bool:
        try:
            async with session.get(f"https://{addr}/ping") as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as exc:
            logs.debug(f"Health check https://{addr}/ping failed: {exc}")
            return False

    async def _health_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=HEALTH_INTERVAL)
        connector = aiohttp.TCPConnector(ssl=False, force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while True:
                servers = list(dict.fromkeys([*self.addresses, self.default]))
                results = await asyncio.gather(*(self._check(session, a) for a in servers))
                for addr, ok in zip(servers, results, strict=True):
                    if self.health.get(addr, True) != ok:
                        old = "ACTIVE" if addr == self.active else ("FAILED" if ok else "HEALTHY")
                        new = "RECOVERING" if ok else "FAILED"
                        verdict = "successful" if ok else "failed"
                        logs.info(f"Server {addr}@{old}->{new} from {verdict} health check")
                    self.health[addr] = ok
                active = self.active
                if active is not None and not self.health.get(active, True):
                    preferred = [a for a in self.candidates() if self.health.get(a, False)]
                    self._switch(preferred[0] if preferred else None, "failed health check")
                elif active == self.default and active not in self.addresses:
                    better = [a for a in self.addresses if a != active and self.health.get(a)]
                    if better:
                        self._switch(better[0], "successful health check")
                await asyncio.sleep(HEALTH_INTERVAL)
