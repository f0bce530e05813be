"""One machine in maintenance: no VIP, not a server candidate, its server seat handed over
first, cordoned and drained; and back out of it.

Entering (its ``ops/maint/<node>`` flag says ``on``): the machine hands the VIP to another
ready server if it holds it and keeps it away; its heartbeat says it may not be a server, so
the coordinator promotes a replacement while this machine keeps its own k3s server running
until the replacement is ready (``Operations.override``); it is cordoned and drained through
the Kubernetes API (``upgrade.drain_timeout``). Then its k3s is stopped: the machine is out of
service (the operator reboots or repairs it; its remaining pods keep running in containerd
until then, as after ``systemctl stop k3snoded``). Stopping it, rather than keeping it as an
agent, also keeps k3s's version-skew rule when a server upgraded by a rollout goes into
maintenance while the others still run the old release.

Leaving (``off``): uncordoned, the VIP free to come here again, eligible again, its k3s
started in the role the coordinator gives it; it does not take a seat back from a healthy
server (no flap): it is an agent until the fleet needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from k3snoded.model import Role
from k3snoded.upgrader import uncordon

if TYPE_CHECKING:
    from k3snoded.operations import Operations

log = logging.getLogger("k3snoded.maintenance")

VIP_KEY = "maintenance"


class MaintenanceRunner:
    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.on = False  # what this machine last acted on
        self.state = ""  # for status: draining, in maintenance, leaving maintenance
        self.task: asyncio.Task[None] | None = None
        self.drained = False  # the VIP is away and the drain is over (or gave up)

    @property
    def busy(self) -> bool:
        running = self.task is not None and not self.task.done()
        return running or self.state == "handing over"

    def tick(self) -> None:
        wanted = self.ops.view.in_maintenance(self.ops.me)
        upgrade = self.ops.upgrader
        if wanted and not self.on and upgrade.busy and not upgrade.early:
            self.state = "waiting for its k3s upgrade to finish"  # k3s is down for it
            return
        if wanted and not self.on and upgrade.busy:
            upgrade.cancel()  # not started on the machine yet: maintenance first
        if wanted != self.on:
            self.on = wanted
            if self.task is not None and not self.task.done():
                self.task.cancel()
            self.task = asyncio.create_task(self._enter() if wanted else self._leave())
        if self.on and self.drained:
            running = self.ops.roles.wanted.role is not Role.NONE
            self.state = "handing over" if running else "in maintenance"

    async def _enter(self) -> None:
        ops = self.ops
        self.state = "moving the VIP away"
        outcome = await ops.switch_away(VIP_KEY, "maintenance")
        log.info("maintenance: %s", outcome.sentence)
        cfg = ops.roles.cfg
        if cfg.upgrade.drain:
            self.state = "draining"
            try:
                log.info(
                    "maintenance: %s",
                    await ops.kube.run("drain", ops.me, cfg.upgrade.drain_timeout),
                )
            except Exception as exc:  # KubeError, OpsError
                log.warning("maintenance: cannot drain %s: %s", ops.me, exc)
        self.state = "handing over"
        self.drained = True
        ops.roles.wake()

    async def _leave(self) -> None:
        ops = self.ops
        self.state = "leaving maintenance"
        self.drained = False
        ops.roles.vip.release(VIP_KEY)
        if ops.roles.cfg.upgrade.drain:
            said = await uncordon(ops.kube, ops.me, attempts=10, pause=3.0)
            level = logging.WARNING if said.startswith("cannot") else logging.INFO
            log.log(level, "maintenance over: %s", said)
        self.state = ""

    async def stop(self) -> None:
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
