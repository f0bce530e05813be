"""``k3s agent``: token/CA validation, agent config, node password, the load balancer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import urllib.parse
from pathlib import Path

import aiohttp

from tests.fakes.k3s_stub import COMMIT, VERSION, logs, node, nodes, process, tokens
from tests.fakes.k3s_stub.configfile import data_dir
from tests.fakes.k3s_stub.flags import Args
from tests.fakes.k3s_stub.loadbalancer import NAME, LoadBalancer
from tests.fakes.k3s_stub.validate import token_text

VALIDATE_INTERVAL = 2.0
CONFIG_INTERVAL = 5.0
APISERVERS_INTERVAL = 5.0
READY_POLL = 1.0  # util.WaitForAPIServerReady
READY_TIMEOUT = 900.0  # util.DefaultAPIServerReadyTimeout


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
        self.kubelet: ssl.SSLContext | None = None  # verified, with the kubelet client cert

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
        # client-kubelet.crt comes as certificate + key (the server generates both).
        pem = (self.agent_dir / "client-kubelet.crt").read_bytes()
        cut = pem.find(b"-----BEGIN EC PRIVATE KEY-----")
        if cut > 0:
            (self.agent_dir / "client-kubelet.crt").write_bytes(pem[:cut])
            (self.agent_dir / "client-kubelet.key").write_bytes(pem[cut:])
            assert self.verified is not None
            ctx = ssl.create_default_context(cafile=str(self.agent_dir / "server-ca.crt"))
            ctx.load_cert_chain(
                str(self.agent_dir / "client-kubelet.crt"),
                str(self.agent_dir / "client-kubelet.key"),
            )
            self.kubelet = ctx
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
        problem = nodes.label_error(self.args.get_list("node-label"))
        if problem:
            logs.fatal(f"kubelet exited: {problem}")
        if not await self._wait_apiserver_ready(session):
            return
        await self._register(session)
        logs.info("k3s agent is up and running")
        process.notify_ready()
        await self._watch_servers(session)

    async def _api(
        self, session: aiohttp.ClientSession, method: str, path: str, body: object = None
    ) -> tuple[int, bytes]:
        url = self.local + path
        kind = "strategic-merge-patch+json" if method == "PATCH" else "json"
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": f"application/{kind}"} if data is not None else {}
        async with session.request(
            method, url, data=data, headers=headers, ssl=self.kubelet or False
        ) as resp:
            return resp.status, await resp.read()

    async def _wait_apiserver_ready(self, session: aiohttp.ClientSession) -> bool:
        """util.WaitForAPIServerReady: GET /readyz (with the kubelet's client certificate)
        through the load balancer every second until 200; the datastore is part of it, so
        during an outage the agent is never ready. Fatal after 15 minutes."""
        started = asyncio.get_running_loop().time()
        last = ""
        while asyncio.get_running_loop().time() - started < READY_TIMEOUT:
            try:
                status, content = await self._api(session, "GET", "/readyz")
                if status == 200:
                    return True
                last = f"APIServer isn't ready: {content.decode(errors='replace')}"
                logs.warning(
                    f"APIServer isn't ready yet: {content.decode(errors='replace')}."
                    " Waiting a little while."
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = f"failed to get apiserver /readyz status: {exc}"
            if await self._sleep(READY_POLL):
                return False
        logs.fatal(
            f"failed to wait for apiserver ready: timed out waiting for the condition, {last}"
        )

    async def _register(self, session: aiohttp.ClientSession) -> None:
        """The kubelet registers its Node (taints only at creation); k3s merges labels in."""
        labels = nodes.parse_labels(self.args.get_list("node-label"))
        taints = nodes.parse_taints(self.args.get_list("node-taint"))
        new = nodes.new_node(self.node_name, labels, taints)
        for _ in range(60):
            try:
                status, _ = await self._api(session, "POST", "/api/v1/nodes", new)
                if status in (201, 409):
                    if status == 201:
                        logs.info(f"Successfully registered node {self.node_name}")
                    # The kubelet's status update: nodeInfo carries this binary's versions.
                    info = {"status": {"nodeInfo": nodes.node_info()}}
                    path = f"/api/v1/nodes/{self.node_name}/status"
                    await self._api(session, "PATCH", path, info)
                    return
                logs.info(f"Unable to register node with API server: {status}")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                logs.info(f"Unable to register node with API server: {exc}")
            if await self._sleep(1.0):
                return
