"""``k3s server``: datastore, bootstrap, CA and tokens, the TLS listener, readiness, leases."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from aiohttp import web

from tests.fakes.k3s_stub import (
    COMMIT,
    VERSION,
    bootstrap,
    drivers,
    embedded,
    knobs,
    logs,
    node,
    nodes,
    pods,
    process,
    tokens,
)
from tests.fakes.k3s_stub.configfile import data_dir, rooted
from tests.fakes.k3s_stub.datastore import Health, Store
from tests.fakes.k3s_stub.drivers import Fatal
from tests.fakes.k3s_stub.endpoint import EndpointError, parse
from tests.fakes.k3s_stub.flags import Args
from tests.fakes.k3s_stub.routes import NodePasswordRejected, ServerState, build_app, ssl_context
from tests.fakes.k3s_stub.tls import (
    KUBERNETES_NAMES,
    SERVICE_IP,
    ensure_cas,
    ensure_client_admin,
    issue_serving,
)

LEASE_PREFIX = "/registry/masterleases/"
LEASE_TTL = 15.0
NODE_PASSWORD_KEY = "/registry/secrets/kube-system/{}.node-password.k3s"
LEADER_KEY = "/registry/leases/kube-system/kube-controller-manager"
LEADER_DURATION = 15.0  # --leader-elect-lease-duration
NORMALIZE = (
    "failed to normalize server token; must be in format K10<CA-HASH>::<USERNAME>:<PASSWORD>"
    " or <PASSWORD>"
)


async def _password(args: Args, server_dir: Path, flag: str) -> str:
    text = args.get_str(flag)
    if args.get_str(flag + "-file"):
        try:
            text = await asyncio.to_thread(tokens.read_token_file, args.get_str(flag + "-file"))
        except OSError as exc:
            logs.fatal(str(exc) if not exc.errno else f"failed to read token file: {exc}")
    if not text:
        return ""
    if flag == "token" and tokens.is_bootstrap_token(text):
        # util.NormalizeToken: kubeadm-style tokens have an ID/secret, not a password.
        logs.fatal(NORMALIZE)
    try:
        return tokens.parse(text).password
    except tokens.TokenError as exc:
        logs.fatal(f"{NORMALIZE}: {exc}")


class Server:
    def __init__(self, args: Args, shutdown: process.Shutdown) -> None:
        self.args = args
        self.shutdown = shutdown
        self.data_dir = Path(data_dir(args))
        self.server_dir = self.data_dir / "server"
        self.port = args.get_int("https-listen-port")
        self.node_name = node.node_name(args.get_str("node-name"), args.get_bool("with-node-id"))
        self.node_ips = args.get_list("node-ip") or [node.detect_ip()]
        ext = args.get_list("node-external-ip")
        self.advertise = args.get_str("advertise-address") or (ext or self.node_ips)[0]
        self.advertise_port = args.get_int("advertise-port") or self.port
        self.store: Store | None = None
        self.state: ServerState | None = None
        self.loss_since: float | None = None
        self.leading = False
        self.renewed_leader = 0.0  # monotonic time of the last successful leader renewal
        self.identity = f"{self.node_name}_{os.getpid()}"

    async def _open_datastore(self) -> Store:
        raw = self.args.get_str("datastore-endpoint")
        files = [self.args.get_str(f"datastore-{k}file") for k in ("ca", "cert", "key")]
        prefix = "preparing server: creating storage endpoint: building kine"
        if bool(files[1]) != bool(files[2]):
            logs.fatal(f"{prefix}: both cert and key must be provided")
        for path in files:
            if path and not os.access(path, os.R_OK):
                logs.fatal(f"{prefix}: open {path}: no such file or directory")
        try:
            ep = parse(raw, str(self.server_dir / "db" / "state.db"), *files)
        except EndpointError as exc:
            logs.fatal(f"{prefix}: {exc}")
        if self.args.get_bool("cluster-init") and ep.driver != "sqlite":
            logs.debug("--cluster-init ignored: an external datastore is configured")
        store = Store(ep)
        try:
            await store.open(self.shutdown.event)
        except (Fatal, TimeoutError) as exc:
            logs.fatal(
                "preparing server: creating storage endpoint: building kine: "
                f"failed to create driver for configured endpoint: {exc}"
            )
        return store

    async def _bootstrap(self, store: Store, password: str) -> None:
        old = knobs.old_bootstrap()
        try:
            if old:
                data = await bootstrap.existing(store, password)
            else:
                data = await bootstrap.lock_or_load(store, password, self.shutdown.event)
        except bootstrap.BootstrapError as exc:
            logs.fatal(f"preparing server: {exc}")
        except Exception as exc:
            logs.fatal(f"preparing server: failed to get bootstrap data: {exc}")
        if data is not None:
            logs.info("Reconciling bootstrap data between datastore and disk")
            bootstrap.write_to_disk(self.server_dir, data)
            ensure_cas(self.server_dir)
            return
        ensure_cas(self.server_dir)
        # k3s saves the bootstrap data a while after finding none (certificates, kine, the
        # apiserver start in between). Pre-2023 servers started together raced in this
        # window; since then the others wait on the lock meanwhile.
        await asyncio.sleep(knobs.bootstrap_window())
        try:
            await bootstrap.save(store, self.server_dir, password)
        except Exception as exc:
            logs.fatal(f"preparing server: failed to save bootstrap data: {exc}")

    def _sans(self) -> list[str]:
        return [
            *self.args.get_list("tls-san"),
            "127.0.0.1",
            "::1",
            "localhost",
            self.node_name,
            *self.node_ips,
            *self.args.get_list("node-external-ip"),
            self.advertise,
            SERVICE_IP,
            *KUBERNETES_NAMES,
        ]

    async def apiservers(self) -> list[str]:
        own = f"{self.advertise}:{self.advertise_port}"
        found = {own}
        if self.store is not None:
            try:
                rows = await self.store.list(LEASE_PREFIX)
            except Exception:
                rows = {}
            now = time.time()
            for value in rows.values():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    lease = json.loads(value)
                    if now - float(lease["renewed"]) <= LEASE_TTL:
                        found.add(f"{lease['ip']}:{lease['port']}")
        return sorted(found)

    async def check_node_password(self, name: str, password: str) -> None:
        if self.store is None:
            return
        key = NODE_PASSWORD_KEY.format(name)
        digest = hashlib.sha256(password.encode()).hexdigest().encode()
        stored = await self.store.get(key)
        if stored is None and await self.store.create(key, digest):
            return
        stored = await self.store.get(key)
        if stored != digest:
            raise NodePasswordRejected(name)

    def _config(self) -> dict[str, object]:
        return {
            "HTTPSPort": self.port,
            "SupervisorPort": self.port,
            "APIServerPort": self.port,
            "ClusterIPRange": "10.42.0.0/16",
            "ServiceIPRange": "10.43.0.0/16",
            "ClusterDNS": "10.43.0.10",
            "ClusterDomain": self.args.get_str("cluster-domain"),
            "FlannelBackend": self.args.get_str("flannel-backend"),
            "Disables": self.args.get_list("disable"),
            "EgressSelectorMode": self.args.get_str("egress-selector-mode"),
            "ServerNodeName": self.node_name,
        }

    async def _lease_once(self) -> None:
        assert self.store is not None
        lease = {"ip": self.advertise, "port": self.advertise_port, "renewed": time.time()}
        value = json.dumps(lease)
        await self.store.put(LEASE_PREFIX + self.advertise, value.encode(), int(LEASE_TTL))

    async def _elect_once(self) -> None:
        """Acquire or renew the kube-controller-manager lease (one CAS on the kine row)."""
        assert self.store is not None
        now = time.time()
        mine = json.dumps({"holder": self.identity, "renewed": now}).encode()
        current = await self.store.revision(LEADER_KEY)
        if current is None:
            won = await self.store.create(LEADER_KEY, mine)
        else:
            lease = json.loads(current[1] or b"{}")
            free = now - float(lease.get("renewed", 0)) > LEADER_DURATION
            if lease.get("holder") != self.identity and not free:
                self.leading = False
                return
            won = await self.store.update(LEADER_KEY, mine, current[0]) is not None
        if won and not self.leading:
            logs.klog(
                "I",
                "leaderelection.go:268",
                "successfully acquired lease kube-system/kube-controller-manager",
            )
        self.leading = won
        if won:
            self.renewed_leader = time.monotonic()

    async def lease_loop(self) -> None:
        """Renew the masterlease and take part in leader election. Losing the datastore is
        fatal only for the leader: once it cannot renew for the renew deadline it logs
        ``leaderelection lost`` and exits 1 (kube-controller-manager ``OnStoppedLeading``:
        klog.FlushAndExit(.., 1)); every other server keeps running and serving."""
        limit = knobs.datastore_loss_exit()
        interval = knobs.lease_interval()
        while True:
            try:
                await asyncio.wait_for(self._lease_once(), timeout=max(1.0, interval * 2))
                await asyncio.wait_for(self._elect_once(), timeout=max(1.0, interval * 2))
                if self.loss_since is not None:
                    logs.info("Datastore connection restored")
                self.loss_since = None
            except Exception as exc:
                now = time.monotonic()
                if self.loss_since is None:
                    self.loss_since = now
                assert self.store is not None
                err = drivers.error_text(self.store.ep, exc) or type(exc).__name__
                logs.klog(
                    "E",
                    "leaderelection.go:436",
                    f"error retrieving resource lock kube-system/kube-controller-manager: {err}",
                )
                if self.leading and now - self.renewed_leader >= limit:
                    logs.klog(
                        "I",
                        "leaderelection.go:297",
                        "failed to renew lease kube-system/kube-controller-manager: timed out "
                        "waiting for the condition",
                    )
                    logs.klog("E", "controllermanager.go:341", '"leaderelection lost"')
                    sys.stderr.flush()
                    os._exit(1)
            await asyncio.sleep(interval)

    async def run(self) -> None:
        args = self.args
        logs.info(f"Starting k3s {VERSION} ({COMMIT})")
        self.server_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.server_dir, 0o700)
        existing = tokens.read_passwd(self.server_dir)
        password = await _password(args, self.server_dir, "token") or existing.get("server", "")
        if not password:
            password = tokens.random_password()
        agent_pw = await _password(args, self.server_dir, "agent-token")
        if not args.get_str("datastore-endpoint"):
            if args.get_str("server") and await _password(args, self.server_dir, "token"):
                await embedded.join(args.get_str("server"), password)
            elif args.get_bool("cluster-init"):
                embedded.warn_cluster_init()
        self.store = await self._open_datastore()
        if self.shutdown.event.is_set():
            return
        tokens.write_passwd(self.server_dir, password, agent_pw or password)
        await self._bootstrap(self.store, password)
        tokens.write_passwd(self.server_dir, password, agent_pw or password)
        ensure_client_admin(self.server_dir)
        serving = issue_serving(self.server_dir, self._sans())
        tokens.write_token_files(
            self.server_dir, password, agent_pw or None, self.advertise, self.advertise_port
        )
        self.state = ServerState(
            server_dir=self.server_dir,
            server_pw=password,
            node_pw=agent_pw or password,
            https_port=self.port,
            config=self._config(),
            apiservers=self.apiservers,
            check_node_password=self.check_node_password,
            datastore_ok=Health(self.store.ep).ok,
            nodes=nodes.Nodes(self.store),
            pods=pods.Pods(self.store),
        )
        runner = web.AppRunner(build_app(self.state), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        bind = args.get_str("bind-address") or "0.0.0.0"
        tls = ssl_context(serving.cert, serving.key, self.server_dir / "tls" / "client-ca.crt")
        site = web.TCPSite(runner, bind, self.port, ssl_context=tls, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            logs.fatal(
                f"starting kubernetes: listen tcp {bind}:{self.port}: bind: {reason.lower()}"
            )
        logs.info(
            f"Running kube-apiserver --advertise-address={self.advertise} --advertise-port="
            f"{self.advertise_port} --bind-address=127.0.0.1 --etcd-servers=unix://kine.sock"
            " --secure-port=6444 --anonymous-auth=false"
        )
        ca_pem = (self.server_dir / "tls" / "server-ca.crt").read_bytes()
        kubeconfig = args.get_str("write-kubeconfig") or rooted("/etc/rancher/k3s/k3s.yaml")
        node.write_kubeconfig(
            kubeconfig,
            args.get_str("write-kubeconfig-mode"),
            args.get_str("write-kubeconfig-group"),
            ca_pem,
            bind if bind not in ("0.0.0.0", "::", "") else "127.0.0.1",
            self.port,
            password,
        )
        await self._register_self()
        tasks = [asyncio.create_task(self.lease_loop()), asyncio.create_task(self._become_ready())]
        tasks.append(asyncio.create_task(self._kubelet()))
        try:
            await self.shutdown.event.wait()
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.cleanup(), 0.5)
            # kube-apiserver removes its own masterlease when it stops.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.delete(LEASE_PREFIX + self.advertise), 0.5)

    async def _register_self(self) -> None:
        """The embedded agent's node password (logged when rejected, like its retry loop)."""
        try:
            await self.check_node_password(self.node_name, node.node_password())
        except NodePasswordRejected:
            logs.error(node.REJECTED)
        except Exception as exc:
            logs.error(f"Failed to register node password: {exc}")

    async def _become_ready(self) -> None:
        await asyncio.sleep(knobs.ready_delay())
        assert self.state is not None
        self.state.ready = True
        logs.info("Kube API server is now running")
        logs.info("k3s is up and running")
        process.notify_ready()

    async def _kubelet(self) -> None:
        """The embedded agent's kubelet: it validates its labels (fatal), registers the Node
        once with its taints, then k3s merges ``--node-label`` labels and, being a server,
        adds the control-plane role labels (never removed by k3s)."""
        labels = self.args.get_list("node-label")
        problem = nodes.label_error(labels)
        while self.state is None or not self.state.ready:
            await asyncio.sleep(0.2)
        if problem:
            logs.fatal(f"kubelet exited: {problem}")
        assert self.state.nodes is not None
        await register_node(
            self.state.nodes,
            self.node_name,
            nodes.parse_labels(labels),
            nodes.parse_taints(self.args.get_list("node-taint")),
            {nodes.CONTROL_PLANE: "true", nodes.MASTER: "true"},
        )


async def register_node(
    api: nodes.Nodes,
    name: str,
    labels: dict[str, str],
    taints: list[dict[str, str]],
    role_labels: dict[str, str] | None = None,
) -> None:
    """Create the Node if absent (taints only then), merge labels in; retried every second."""
    for _ in range(3600):
        try:
            try:
                await api.create(nodes.new_node(name, labels, taints))
                logs.info(f"Successfully registered node {name}")
            except nodes.Conflict:
                pass
            if await api.merge_labels(name, {**labels, **(role_labels or {})}):
                logs.info(f"labels have been set successfully on node: {name}")
                await api.report_status(name)
                return
        except Exception as exc:
            logs.info(f"Waiting for control-plane node {name} startup: {exc}")
        await asyncio.sleep(1.0)
