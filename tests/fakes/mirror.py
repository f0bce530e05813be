"""A release mirror on loopback for tests: serves a directory laid out by
``releases.write_mirror`` over plain HTTP (as k3snoded's ``k3s.mirror``), and counts hits."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


@dataclass
class LocalMirror:
    root: Path
    url: str = ""
    hits: Counter[str] = field(default_factory=Counter)


@contextlib.asynccontextmanager
async def serve_mirror(root: Path, host: str = "127.0.0.1") -> AsyncIterator[LocalMirror]:
    """Serve ``root`` on ``host`` at a free port until the context ends."""
    m = LocalMirror(root)

    async def handle(request: web.Request) -> web.StreamResponse:
        m.hits[request.path] += 1
        path = (root / request.path.lstrip("/")).resolve()
        if root.resolve() not in path.parents or not path.is_file():
            return web.Response(status=404, text="not found")
        return web.Response(body=path.read_bytes())

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    bound = runner.addresses[0]
    m.url = f"http://{bound[0]}:{bound[1]}"
    try:
        yield m
    finally:
        await runner.cleanup()
