"""A tiny TCP proxy on loopback that a test can cut or freeze, to fake a datastore outage
without touching the shared database servers.

Run as a program (``python -m tests.contract.proxy``) inside a lab namespace it is the lab's
"abandoned transaction": the first client message containing ``--silence-on`` TEXT silences
that connection, and only that one (nothing more forwarded either way, the server's side kept
open, as when the client's machine dies); the client's address is appended to ``--report``.
With ``--armed-by FILE``, only while FILE exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable


class Proxy:
    """Forwards 127.0.0.1:<port> to ``target``.

    ``cut()``: drop every connection (RST) and refuse new ones; ``freeze()``: keep connections
    open but forward nothing (a hung server); ``restore()``: back to normal, same port.
    ``blackhole_after(n)``: forward ``n`` more client messages, then nothing either way, and
    keep the server's side open even when the client closes: to the server the client simply
    went silent, as when its machine dies or is cut off (a transaction it left open stays open).
    ``accepted`` counts the connections clients opened.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._budget: int | None = None  # client messages still forwarded (None: no limit)
        self.silence_on: bytes | None = None  # a client message with this silences its conn
        self.on_silence: Callable[[str], None] | None = None
        self.armed: Callable[[], bool] = lambda: True
        self._silent = False
        self._held: set[asyncio.StreamWriter] = set()  # server sides kept open while silent
        self.accepted = 0

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        if self.silence_on is not None:
            conn = _Silencer(self, writer.get_extra_info("peername"))
            for src, dst, up in ((reader, up_writer, True), (up_reader, writer, False)):
                task = asyncio.create_task(conn.pump(src, dst, up))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        for src, dst, up in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pump(src, dst, up))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                if up and self._budget is not None:
                    if self._budget <= 0:
                        self._silent = True
                    self._budget -= 1
                if self._silent:
                    continue
                dst.write(data)
                await dst.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            self._writers.discard(dst)
            if self._silent and up:
                self._held.add(dst)  # the server must not learn that the client is gone
            else:
                dst.transport.abort()

    def blackhole_after(self, messages: int) -> None:
        self._budget = messages

    def freeze(self) -> None:
        self._flowing.clear()

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.sleep(0.05)

    async def restore(self) -> None:
        self._flowing.set()
        self._budget, self._silent = None, False
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        self._flowing.set()
        await self.cut()
        for writer in list(self._held):
            writer.transport.abort()
        self._held.clear()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _Silencer:
    """One connection of a ``silence_on`` proxy."""

    def __init__(self, proxy: Proxy, peer: tuple[str, int] | None) -> None:
        self.proxy = proxy
        self.peer = peer[0] if peer else "?"
        self.silent = False

    async def pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        pattern = self.proxy.silence_on
        try:
            while data := await src.read(65536):
                hit = up and pattern is not None and pattern in data
                if hit and not self.silent and self.proxy.armed():
                    self.silent = True
                    self.proxy.silence_on = pattern = None  # one connection only
                    if self.proxy.on_silence is not None:
                        self.proxy.on_silence(self.peer)
                if self.silent:
                    continue
                dst.write(data)
                await dst.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            if self.silent and up:
                self.proxy._held.add(dst)
            else:
                dst.transport.abort()


async def _main(listen: str, target: str, text: str, report: str, armed_by: str) -> None:
    host, _, port = target.rpartition(":")
    proxy = Proxy(host, int(port))
    lhost, _, lport = listen.rpartition(":")
    proxy.port = int(lport)
    proxy.silence_on = text.encode()

    def noted(peer: str) -> None:
        with open(report, "a") as f:
            f.write(peer + "\n")

    proxy.on_silence = noted
    if armed_by:
        proxy.armed = lambda: os.path.exists(armed_by)
    proxy._server = await asyncio.start_server(proxy._accept, lhost, proxy.port)
    await asyncio.Event().wait()  # until the lab ends the process


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--silence-on", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--armed-by", default="", help="silence only while this file exists")
    a = ap.parse_args()
    asyncio.run(_main(a.listen, a.target, a.silence_on, a.report, a.armed_by))
