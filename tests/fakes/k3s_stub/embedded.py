"""Embedded etcd is not emulated; this is how the stand-in answers the flags that ask for it.

* ``--cluster-init`` without ``--datastore-endpoint``: runs on SQLite, with a warning.
* ``--server`` (or ``K3S_URL``) + token without an endpoint means "join embedded etcd": like k3s,
  ask the target's ``/v1-k3s/server-bootstrap``; a server without etcd answers 400
  ``etcd disabled`` and the join is fatal. An unreachable target is fatal too.
"""

from __future__ import annotations

import aiohttp

from tests.fakes.k3s_stub import logs


async def join(server_url: str, password: str) -> None:
    url = server_url.rstrip("/") + "/v1-k3s/server-bootstrap"
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, auth=aiohttp.BasicAuth("server", password), ssl=False) as resp,
        ):
            await resp.read()
            status, reason = resp.status, resp.reason
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        logs.fatal(f'preparing server: failed to bootstrap cluster data: Get "{url}": {exc}')
    if status != 200:
        logs.fatal(f"preparing server: failed to bootstrap cluster data: {url}: {status} {reason}")
    logs.fatal(
        "preparing server: embedded etcd is not emulated by the stand-in k3s; use "
        "--datastore-endpoint"
    )


def warn_cluster_init() -> None:
    logs.warning("embedded etcd is not emulated by the stand-in k3s: --cluster-init runs on SQLite")
