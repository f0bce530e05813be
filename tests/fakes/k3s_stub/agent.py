"""``k3s agent``: token/CA validation, agent config, node password, the load balancer."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import urllib.parse
from pathlib import Path

import aiohttp

from tests.fakes.k3s_stub import COMMIT, VERSION, logs, node, process, tokens
from tests.fakes.k3s_stub.configfile import data_dir
from tests.fakes.k3s_stub.flags import Args
from tests.fakes.k3s_stub.loadbalancer import NAME, LoadBalancer
from tests.fakes.k3s_stub.validate import token_text

VALIDATE_INTERVAL = 2.0
CONFIG_INTERVAL = 5.0
APISERVERS_INTERVAL = 5.0


class AgentError(Exception):
    """One failed step of the join; logged and retried."""


class Agent:
    def __init__(self, args: Args, shutdown: process.Shutdown) -> None:
        self.args = args
        self.shutdown = shutdown
        self.server_url = args.get_str("server").rstrip("/")
        try:
            self.token = tokens.parse(token_text(args))
        except tokens.TokenError as exc:
            logs.fatal(str(exc))
        self.agent_dir = Path(data_dir(args)) / "agent"
        u = urllib.parse.urlsplit(self.server_url)
        default = f"{u.hostname}:{u.port or 443}"
        if u.hostname and ":" in u.hostname:
            default = f"[{u.hostname}]:{u.port or 443}"
        self.lb_port = args.get_int("lb-server-port")
        self.lb = LoadBalancer(
            self.agent_dir / "etc" / f"{NAME}.json", self.server_url, default, self.lb_port
        )
        self.local = f"https://127.0.0.1:{self.lb_port}"
        self.node_name = node.node_name(args.get_str("node-name"), args.get_bool("with-node-id"))
        self.node_ip = (args.get_list("node-ip") or [node.detect_ip()])[0]
        self.verified: ssl.SSLContext | None = None

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless shutting down; True when shutdown was requested."""
        try:
            await asyncio.wait_for(self.shutdown.event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _get(
        self, session: aiohttp.ClientSession, path: str, headers: dict[str, str] | None = None
    ) -> bytes:
        url = self.local + path
        auth = aiohttp.BasicAuth("node", self.token.password)
        try:
            ctx = self.verified or True
            async with session.get(url, auth=auth, headers=headers, ssl=ctx) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise AgentError(f"{url}: {resp.status} {resp.reason}")
                return body
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AgentError(f'Get "{url}": {exc}') from exc

    async def _validate_once(self, session: aiohttp.ClientSession) -> None:
        url = self.local + "/cacerts"
        try:
            async with session.get(url, ssl=False) as resp:
                bundle = await resp.read()
                if resp.status != 200:
                    raise AgentError(f"failed to get CA certs: {url}: {resp.status} {resp.reason}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AgentError(f'failed to get CA certs: Get "{url}": {exc}') from exc
        digest = hashlib.sha256(bundle).hexdigest()
        if self.token.ca_hash and self.token.ca_hash != digest:
            raise AgentError(
                "token CA hash does not match the Cluster CA certificate hash: "
                f"{self.token.ca_hash} != {digest}"
            )
        ctx = ssl.create_default_context(cadata=bundle.decode())
        try:
            async with session.get(url, ssl=ctx) as resp:
                await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AgentError(f'CA cert validation failed: Get "{url}": {exc}') from exc
        if not self.token.ca_hash:
            logs.warning(
                "Cluster CA certificate is not trusted by the host CA bundle, but the token does"
                " not include a CA hash. Use the full token from the server's node-token file to"
                " enable Cluster CA validation."
            )
        self.verified = ctx
        self.agent_dir.mkdir(parents=True, exist_ok=True)
        (self.agent_dir / "server-ca.crt").write_bytes(bundle)

    async def _config_once(self, session: aiohttp.ClientSession) -> None:
        try:
            await self._get(session, "/v1-k3s/config")
        except AgentError as exc:
            raise AgentError(f"failed to retrieve configuration from server: {exc}") from exc
        (self.agent_dir / "client-ca.crt").write_bytes(
            await self._get(session, "/v1-k3s/client-ca.crt")
        )
        headers = {
            "k3s-Node-Name": self.node_name,
            "k3s-Node-Password": node.node_password(),
            "k3s-Node-IP": self.node_ip,
        }
        for name in ("serving-kubelet.crt", "client-kubelet.crt"):
            try:
                body = await self._get(session, f"/v1-k3s/{name}", headers)
            except AgentError as exc:
                if ": 403 " in str(exc):
                    logs.error(node.REJECTED)
                raise
            (self.agent_dir / name).write_bytes(body)
        await self._refresh_servers(session)

    async def _refresh_servers(self, session: aiohttp.ClientSession) -> None:
        import json

        body = await self._get(session, "/v1-k3s/apiservers")
        addresses = json.loads(body)
        if isinstance(addresses, list):
            self.lb.update([str(a) for a in addresses])

    async def _watch_servers(self, session: aiohttp.ClientSession) -> None:
        while not await self._sleep(APISERVERS_INTERVAL):
            try:
                await self._refresh_servers(session)
            except AgentError as exc:
                logs.debug(f"Failed to refresh apiserver addresses: {exc}")

    async def run(self) -> None:
        logs.info(f"Starting k3s agent {VERSION} ({COMMIT})")
        self.lb.load()
        try:
            await self.lb.start()
        except OSError as exc:
            logs.fatal(f"listen tcp 127.0.0.1:{self.lb_port}: bind: {exc.strerror or exc}")
        timeout = aiohttp.ClientTimeout(total=5)
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            try:
                await self._join(session)
            finally:
                await self.lb.close()

    async def _join(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                await self._validate_once(session)
                break
            except AgentError as exc:
                logs.error(f"Failed to validate connection to cluster at {self.server_url}: {exc}")
            if await self._sleep(VALIDATE_INTERVAL):
                return
        while True:
            try:
                await self._config_once(session)
                break
            except AgentError as exc:
                logs.info(f"Waiting to retrieve agent configuration; server is not ready: {exc}")
            if await self._sleep(CONFIG_INTERVAL):
                return
        while True:
            try:
                await self._get(session, "/v1-k3s/readyz")
                break
            except AgentError as exc:
                logs.info(f"Waiting for control-plane node to become ready: {exc}")
            if await self._sleep(VALIDATE_INTERVAL):
                return
        logs.info("k3s agent is up and running")
        process.notify_ready()
        await self._watch_servers(session)
