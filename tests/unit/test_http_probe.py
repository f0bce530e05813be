"""The readiness probe keeps one connection alive and reopens it after the server restarts."""

from __future__ import annotations

import asyncio

from k3snoded.process import HttpProbe, insecure_tls_context


class PingServer:
    """A tiny keep-alive HTTP/1.1 server on loopback that counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            for _ in range(1000):
                request = await reader.readuntil(b"\r\n\r\n")
                if not request:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:  # what Server.close_clients() does on Python >= 3.13
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()


async def test_probe_reuses_one_connection_and_reconnects() -> None:
    srv = PingServer()
    await srv.start()
    probe = HttpProbe(f"http://127.0.0.1:{srv.port}/ping", insecure_tls_context())
    try:
        for _ in range(5):
            assert await probe.status(2.0) == 200
        assert srv.connections == 1
        await srv.stop()
        assert await probe.status(1.0) is None  # nobody listens
        await srv.start(srv.port)  # "k3s restarted"
        assert await probe.status(2.0) == 200
        assert srv.connections == 2
    finally:
        probe.close()
        await srv.stop()
