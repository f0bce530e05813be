"""Composition root: builds everything, owns every task, handles signals and sd_notify.

Only this module names concrete implementations. Shutdown runs in reverse order of start-up:
the role source (fleet loop, VIP) first, then the k3s child, then the API.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from k3snoded import __version__, capin, handover, k3s, ops_api, ops_wiring
from k3snoded.api import ApiServer
from k3snoded.config import Config, changed_keys, load_config, needs_restart
from k3snoded.coredump import forbid_core_dumps
from k3snoded.discovery.signing import derive_key
from k3snoded.errors import EX_CONFIG, ConfigError, InstallError, K3snodedError
from k3snoded.install import ensure_k3s, spec_from_config
from k3snoded.kube import NodeRoleKeeper
from k3snoded.logs import k3s_output, set_context, setup_logging
from k3snoded.metrics import render_metrics
from k3snoded.model import Peer, Role
from k3snoded.notify import SystemdNotifier, watchdog_interval
from k3snoded.peers import PeerBook
from k3snoded.roles import RoleSource, Wanted, build_role_source
from k3snoded.supervisor import Supervisor
from k3snoded.ticks import sleep_to_grid
from k3snoded.tokens import read_token
from k3snoded.vip import VipKeeper

log = logging.getLogger("k3snoded")


class Daemon:
    """One node: keeps the local k3s in the role the fleet (or the config) says."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.notifier = SystemdNotifier.from_env()
        self.supervisor = Supervisor(
            "k3s",
            cfg.node.run_dir,
            backoff_max=cfg.k3s.restart_backoff_max,
            output=k3s_output,
        )
        self.vip = VipKeeper(cfg)
        self.peers = PeerBook(cfg, local=self._local_peer)
        self.roles: RoleSource = build_role_source(
            cfg, self.supervisor, vip=self.vip, peers=self.peers
        )
        self.roles.after_each_step(self.peers.poke)
        self.ops_request = ops_wiring.attach(self.roles, self.peers)
        self.node_roles = NodeRoleKeeper(
            lambda: self.cfg, lambda: self.roles.wanted.role, lambda: self.supervisor.status
        )
        self.supervisor.on_change(self.node_roles.child_changed)
        self.api = ApiServer(
            socket_path=cfg.socket_path,
            status=self.status,
            metrics=lambda: render_metrics(self.status()),
            healthy=self._healthy,
            listen=cfg.api.listen,
            peer_setup=[self.peers.install, ops_api.install(self.peers.api, self.ops_request)],
            leave=self.leave,
            ops=lambda req: self.ops_request(req, f"the control socket on {self.cfg.node.name}"),
        )
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()
        self._ready_sent = False
        self._last_status_line = ""

    # ---- status --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        child = self.supervisor.status
        wanted = self.roles.wanted
        out: dict[str, Any] = {
            "version": __version__,
            "node": {
                "name": self.cfg.node.name,
                "address": self.cfg.node.address,
                "preference": self.cfg.node.role.value,
                "role": wanted.role.value,
            },
            "k3s": {
                "state": child.state.value,
                "ready": child.ready,
                "pid": child.pid,
                "restarts": child.restarts,
                "crash_loop": child.crash_loop,
                "adopted": child.adopted,
                "last_exit": child.last_exit,
                "message": child.message,
            },
            "registration": wanted.registration,
            "decision": wanted.reason,
            "limits": {
                "servers_wanted": self.cfg.servers.count,
                "lease_ttl": self.cfg.coordination.lease_ttl,
                "vip": self.cfg.registration.vip.enabled and bool(self.cfg.registration.address),
            },
        }
        out.update(self.roles.status())
        return out

    def _local_peer(self) -> Peer:
        w = self.roles.wanted
        return Peer(
            name=self.cfg.node.name,
            cluster=self.cfg.cluster.name,
            addresses=(self.cfg.node.address,) if self.cfg.node.address else (),
            api_port=self.cfg.api.port,
            role=w.role,
            registration=w.registration or self.cfg.registration.address or None,
            ca_hash=self.roles.pins.announced_hash or None,  # first-hand, never hearsay
            agent_token=self.roles.pin.agent_token,
        )

    def _healthy(self) -> bool:
        """``/healthz`` for load balancers: this machine is a k3s server and it is ready."""
        return self.roles.wanted.role is Role.SERVER and self.supervisor.status.ready

    def journal_fields(self) -> dict[str, str]:
        """Fields on every journal entry: ``journalctl -u k3snoded K3SNODED_ROLE=server``."""
        c = self.supervisor.status
        return {
            "K3SNODED_NODE": self.cfg.node.name,
            "K3SNODED_ROLE": self.roles.wanted.role.value,
            "K3SNODED_K3S": "ready" if c.ready else c.state.value,
        }

    def _status_line(self) -> str:
        w = self.roles.wanted
        c = self.supervisor.status
        k3s = "ready" if c.ready else c.state.value
        if c.crash_loop:
            k3s += ", crash loop"
        held = ", VIP held" if self.vip.held else ""  # not the whole status, every second
        return f"{w.role.value}, k3s {k3s}{held}: {w.reason}"

    # ---- lifecycle -----------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        log.info(
            "k3snoded %s starting: node %s, cluster %s, config %s",
            __version__,
            self.cfg.node.name,
            self.cfg.cluster.name,
            self.cfg.source,
        )
        set_context(self.journal_fields)
        await asyncio.to_thread(self._prepare_files)
        await self.api.start()
        try:
            async with asyncio.TaskGroup() as tg:
                sup = tg.create_task(self.supervisor.run(), name="supervisor")
                peers = tg.create_task(self.peers.run(), name="discovery")
                roles = tg.create_task(self._run_roles(), name="roles")
                watch = tg.create_task(self._watch(), name="notify")
                node_roles = tg.create_task(self.node_roles.run(), name="node-roles")
                await self._stop.wait()
                node_roles.cancel()
                for reload in list(self._reloads):
                    reload.cancel()
                restart = await asyncio.to_thread(handover.restart_requested)
                self.notifier.notify("STOPPING=1")
                if restart:  # decision 0005: k3s and the VIP stay for the next daemon
                    log.info("systemd restarts k3snoded: k3s keeps running, the VIP is handed over")
                    roles.cancel()
                    await asyncio.wait([roles])
                    await self.vip.hand_over()
                else:
                    log.info("stopping: releasing the role, then stopping k3s")
                    await self.roles.stop()  # ends the role loop first, then releases VIP, lease
                    roles.cancel()
                await self.supervisor.shutdown(stop_child=not restart)
                await sup
                peers.cancel()
                await self.peers.close()
                watch.cancel()
        finally:
            await self.api.close()
        log.info("stopped")
        return 0

    async def _run_roles(self) -> None:
        """Make sure the k3s binary is there (installing it if configured), then run roles."""
        delay = 10.0
        while True:
            try:
                await ensure_k3s(spec_from_config(self.cfg.k3s), self.cfg.k3s.binary)
                break
            except InstallError as err:
                log.error("k3s is not usable: %s; trying again in %.0f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 600.0)
        await self.roles.run()

    def _prepare_files(self) -> None:
        """The 0600 token copy and agent token k3s servers read, and the node password when
        the machine has none. A machine with only the agent token has none of them: k3s makes
        its node password itself (docs/security.md)."""
        if self.cfg.cluster.agent_token_file is not None:
            return
        k3s.install_token_file(self.cfg)
        key = derive_key(read_token(self.cfg.cluster.token_file), self.cfg.cluster.name)
        capin.write_agent_token(self.cfg, key)
        if k3s.ensure_node_password(self.cfg, key):
            log.info("wrote k3s's node password file %s", self.cfg.k3s.node_password_file)

    async def leave(self) -> None:
        """``k3snoded leave``: hand over what this node holds, then stop k3s."""
        await self.roles.leave()

    def _request_stop(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            return
        log.info("received %s", sig.name)
        self._stop.set()

    def _on_sighup(self) -> None:
        """Reload in a task: reading and validating the config is file I/O, kept off the loop."""
        task = asyncio.create_task(self._reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        async with self._reload_lock:  # one reload at a time, in the order of the signals
            try:
                new = await asyncio.to_thread(load_config, self.cfg.source)
            except ConfigError as err:
                log.error(
                    "SIGHUP: the new configuration is invalid; keeping the running one\n%s", err
                )
                return
            if new == self.cfg:
                log.info("SIGHUP: configuration unchanged")
                return
            restart = needs_restart(self.cfg, new)
            if "cluster.token_file" not in restart and await asyncio.to_thread(
                self._token_changed, new
            ):
                restart.append("cluster.token_file (its content)")
            if restart:
                log.error(
                    "SIGHUP: reload refused, keeping the running configuration: %s can only "
                    "change with a restart (systemctl restart k3snoded); nothing else was applied",
                    ", ".join(restart),
                )
                return
            log.info(
                "SIGHUP: configuration reloaded from %s: applying %s",
                new.source,
                ", ".join(changed_keys(self.cfg, new)),
            )
            self.cfg = new
            try:
                await asyncio.to_thread(self._prepare_files)  # before k3s restarts with them
            except (OSError, K3snodedError) as err:
                log.error("SIGHUP: cannot prepare the token or node password files: %s", err)
                return
            await self.vip.reconfigure(new)
            await self.roles.reconfigure(new)

    def _token_changed(self, new: Config) -> bool:
        """Whether the token file now holds another token than the one the daemon runs with."""
        if new.cluster.agent_token_file is not None:
            return False  # read again when k3s next starts (docs/configuration.md)
        try:
            key = derive_key(read_token(new.cluster.token_file), new.cluster.name)
        except (OSError, K3snodedError):
            return True
        return key != self.peers.key

    async def _watch(self) -> None:
        """Feed the watchdog, keep STATUS= current, send READY=1 once the role runs. On the
        daemon's time grid (ticks.py): it wakes with every tenth advert of a VRRP master and
        with discovery's check, not beside them."""
        interval = watchdog_interval()
        tick = min(interval, 1.0) if interval else 1.0
        while True:
            if interval:
                self.notifier.notify("WATCHDOG=1")
            line = self._status_line()
            if line != self._last_status_line:
                self._last_status_line = line
                self.notifier.notify(f"STATUS={line}")
            if not self._ready_sent and self.supervisor.status.ready:
                self._ready_sent = True
                self.notifier.notify("READY=1")
                log.info("local %s is running and ready", self.roles.wanted.role.value)
            await sleep_to_grid(tick)


def run_daemon(config_path: Path) -> int:
    """Entry point of ``k3snoded run``: validate first, exit 78 on a bad config."""
    setup_logging()
    forbid_core_dumps()  # the token and the DB password live in this process (coredump.py)
    try:
        cfg = load_config(config_path)
    except ConfigError as err:
        log.error("%s", err)
        return EX_CONFIG
    try:
        return asyncio.run(Daemon(cfg).run())
    except K3snodedError as err:
        log.error("fatal: %s", err)
        return 1
    except BaseExceptionGroup as group:
        fatal, rest = group.split(K3snodedError)
        if rest is not None or fatal is None:
            raise
        for exc in fatal.exceptions:
            log.error("fatal: %s", exc)
        return 1


__all__ = ["Daemon", "Wanted", "run_daemon"]
