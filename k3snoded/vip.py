"""Keeps the registration VIP with the VRRP speaker while this node is a server (D4).

Level-triggered: ``ensure(run=..., healthy=...)`` every cycle starts or stops the speaker and
passes the local k3s API's health on; agents never run a speaker. At start-up, every node (agent
or server) removes a stale copy of the VIP left by a killed predecessor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from ipaddress import IPv4Interface
from typing import TYPE_CHECKING, Any

from k3snoded import handover
from k3snoded.config import Config
from k3snoded.errors import VrrpError
from k3snoded.model import VrrpAuthentication
from k3snoded.tokens import read_token

if TYPE_CHECKING:
    from k3snoded.vrrp.speaker import VrrpSpeaker

log = logging.getLogger("k3snoded.vip")

BOOST_PRIORITY = 254  # a switchover's named server, for the moment of the hand-over
RETRY_FIRST = 1.0  # seconds before a failed speaker is started again; doubles to RETRY_MAX
RETRY_MAX = 60.0
STABLE_AFTER = 30.0  # a speaker up this long has recovered: the backoff and the log reset


class VipGuard:
    """A tiny child that removes the VIP the moment this daemon dies, SIGKILL included.

    Its stdin is a pipe only the daemon holds (descriptors are not inherited by other
    children): when the daemon exits for any reason the kernel closes it, ``read`` sees EOF
    and the guard deletes the address. Without it a killed daemon's VIP lingered until its
    kernel lifetime ran out (up to 1 s), beside the backup that took over after 0.36 s.
    keepalived does the same with a child that gets its parent's death signal.
    """

    def __init__(self, cidr: str, interface: str) -> None:
        self.cidr = cidr
        self.interface = interface
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        script = 'read _; exec ip -4 addr del "$1" dev "$2" 2>/dev/null'
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", script, "k3snoded-vip-guard", self.cidr, self.interface],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    async def disarm(self) -> None:
        """End the guard without it removing the address (a daemon restart hands it over)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5.0)
            if proc.stdin is not None:
                proc.stdin.close()

    async def stop(self) -> None:
        """Close the pipe (the guard removes the address if still there) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.to_thread(proc.wait, 5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5.0)


class VipKeeper:
    def __init__(self, cfg: Config) -> None:
        self._configure(cfg)
        self._speaker: VrrpSpeaker | None = None
        self._task: asyncio.Task[None] | None = None
        self._guard: VipGuard | None = None
        self._healthy = False
        self._failed_logged = False
        self._started = 0.0  # loop time the current speaker started
        self._retry_at = 0.0  # no new speaker before this loop time (after a failure)
        self._retry_delay = RETRY_FIRST
        self._resume_until = 0.0  # monotonic: the previous daemon handed the VIP over until then
        # Planned operations (operations.py): while any hold is set the speaker stands down
        # (a holder releases the VIP, a backup never takes it); a boost raises the priority
        # so that this backup is the one that takes over at the holder's release.
        self._holds: dict[str, str] = {}
        self._boost: asyncio.TimerHandle | None = None

    def _configure(self, cfg: Config) -> None:
        reg = cfg.registration
        self.enabled = reg.vip.enabled and bool(reg.address)
        self.address = reg.address
        self.interface = reg.vip.interface or cfg.node.interface
        self.cfg = cfg
        self._advert_key: bytes | None = None  # None: unauthenticated adverts
        if self.enabled and reg.vip.authentication is VrrpAuthentication.HMAC:
            from k3snoded.vrrp.auth import derive_vrrp_key

            self._advert_key = derive_vrrp_key(read_token(cfg.cluster.token_file), cfg.cluster.name)
        if self.enabled:
            # Import now, not at the first promotion: after a package upgrade /opt holds the
            # new code while this daemon still runs the old one (packaging/README.md).
            import k3snoded.vrrp.netlink
            import k3snoded.vrrp.speaker  # noqa: F401

    async def reconfigure(self, cfg: Config) -> None:
        """A reload: when the VIP's settings changed, release the VIP (a master sends priority
        0 and removes it) and let the next ``ensure`` start a speaker with the new ones."""
        old = (self.enabled, self.address, self.interface, self.cfg.registration.vip)
        new_vip = cfg.registration
        new = (
            new_vip.vip.enabled and bool(new_vip.address),
            new_vip.address,
            new_vip.vip.interface or cfg.node.interface,
            new_vip.vip,
        )
        if old != new and self._speaker is not None:
            log.info(
                "reload: releasing the VIP %s; the new settings start a new speaker", self.address
            )
            await self.stop()
        self._configure(cfg)
        self._retry_at, self._retry_delay = 0.0, RETRY_FIRST

    def _vip(self) -> IPv4Interface:
        return IPv4Interface(f"{self.address}/{self.cfg.registration.vip.prefix}")

    async def remove_stale(self) -> None:
        """Remove the VIP from our interface if a killed predecessor left it there."""
        if not self.enabled:
            return
        from k3snoded.vrrp.netlink import Netlink

        left = await asyncio.to_thread(handover.take_record, self.cfg.node.run_dir, self.address)
        if left is not None:
            self._resume_until = time.monotonic() + left
            log.info("keeping the VIP %s handed over by the previous daemon", self.address)
            return
        try:
            async with Netlink() as nl:
                info = await nl.interface(self.interface)
                if await nl.ensure_absent(info.index, self._vip()):
                    log.warning(
                        "removed a stale copy of the VIP %s from %s (left by a previous run)",
                        self.address,
                        self.interface,
                    )
        except (VrrpError, OSError) as err:
            log.error("cannot check %s for a stale VIP: %s", self.interface, err)

    def health(self, healthy: bool) -> None:
        """The local k3s API answers /readyz (or not): passed to the speaker at once, unless
        a planned operation holds the VIP away from this machine."""
        self._healthy = healthy
        if self._speaker is not None:
            self._speaker.set_healthy(healthy and not self._holds)

    # ---- planned operations (switchover, rollout, maintenance) ----------------------------
    def hold(self, key: str, why: str) -> None:
        """Keep the VIP off this machine until ``release(key)``: a holder releases it at once
        (priority-0 advert: the best backup takes over), a backup never takes it."""
        if key not in self._holds and self._speaker is not None:
            log.info("VIP held away from this machine: %s", why)
        self._holds[key] = why
        self.health(self._healthy)

    def release(self, key: str) -> None:
        if self._holds.pop(key, None) is not None:
            if not self._holds and self._speaker is not None:
                log.info("VIP no longer held away from this machine")
            self.health(self._healthy)

    @property
    def held_away(self) -> tuple[str, ...]:
        return tuple(self._holds.values())

    def boost(self, seconds: float) -> str:
        """For a switchover to this machine: raise the priority to BOOST_PRIORITY for at most
        ``seconds`` (the holder's release then makes this backup take over first, after its
        skew time of under a millisecond). "" when done, else why not."""
        speaker = self._speaker
        if speaker is None:
            return "this machine runs no VRRP speaker"
        st = speaker.status
        if self._holds or not st.healthy:
            return "this machine's VRRP speaker stands down (unhealthy or held away)"
        if st.holds_vip:
            return "this machine already holds the VIP"
        speaker.set_priority(BOOST_PRIORITY)
        if self._boost is not None:
            self._boost.cancel()
        self._boost = asyncio.get_running_loop().call_later(seconds, self.unboost)
        return ""

    def unboost(self) -> None:
        if self._boost is not None:
            self._boost.cancel()
            self._boost = None
        if self._speaker is not None:
            self._speaker.set_priority(self.cfg.registration.vip.priority)

    @property
    def holds(self) -> bool:
        """This machine holds the VIP now (as its speaker last reconciled)."""
        return self._speaker is not None and self._speaker.status.holds_vip

    @property
    def master(self) -> str | None:
        """The address this speaker believes is master (from adverts; ours when master)."""
        return None if self._speaker is None else self._speaker.status.master

    async def ensure(self, *, run: bool, healthy: bool) -> None:
        """Level-triggered: run the speaker while ``run``. A speaker that failed is restarted
        after a backoff (1 s doubling to 60 s), not every cycle with a new guard process; the
        first failure of a run is logged, and a failure after a recovery is logged again."""
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        task = self._task
        if task is not None and task.done():
            err = None if task.cancelled() else task.exception()
            if not self._failed_logged:
                log.error(
                    "the VRRP speaker stopped: %s; restarting it in %.0f s (then backing off)",
                    err,
                    self._retry_delay,
                )
                self._failed_logged = True
            await self.stop()
            self._retry_at = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        elif task is not None and now - self._started >= STABLE_AFTER:
            if self._failed_logged:
                log.info("the VRRP speaker runs again for %s", self.address)
                self._failed_logged = False
            self._retry_delay = RETRY_FIRST
        if run and self._speaker is None and now >= self._retry_at:
            resume = self._resume_until > time.monotonic()
            if resume and not healthy:
                return  # keep the handed-over VIP (its kernel lifetime bounds this) until ready
            self._resume_until = 0.0
            self._speaker = self._make_speaker(healthy and not self._holds, resume)
            self._start_guard()
            self._started = now
            self._task = asyncio.create_task(self._speaker.run(), name="vrrp")
            if not self._failed_logged:
                log.info("server role: running the VRRP speaker for %s", self.address)
        elif not run and self._speaker is not None:
            log.info("no longer a server: releasing the VIP")
            await self.stop()
        self.health(healthy)

    async def hand_over(self) -> None:
        """For a daemon restart: a master keeps the VIP for the next daemon (handover.py)."""
        speaker, task, guard = self._speaker, self._task, self._guard
        self._speaker, self._task, self._guard = None, None, None
        kept = False
        if speaker is not None:
            with contextlib.suppress(VrrpError, OSError):
                kept = await speaker.hand_over(handover.HOLD_INTERVAL, handover.HOLD_LIFETIME)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, VrrpError, OSError):
                await task
        if guard is not None:
            await (guard.disarm() if kept else guard.stop())
        if kept:
            run_dir, lifetime = self.cfg.node.run_dir, handover.HOLD_LIFETIME
            await asyncio.to_thread(handover.write_record, run_dir, self.address, lifetime)
            log.info("handed the VIP %s over to the next daemon", self.address)

    def _make_speaker(self, healthy: bool, resume: bool) -> VrrpSpeaker:
        from k3snoded.vrrp.auth import AdvertAuth
        from k3snoded.vrrp.speaker import VrrpSpeaker

        vip = self.cfg.registration.vip
        speaker = VrrpSpeaker(
            interface=self.interface,
            vip=self.address,
            prefix=vip.prefix,
            vrid=vip.vrid,
            priority=vip.priority,
            advert_interval=vip.advert_interval,
            preempt=vip.preempt,
            unicast_peers=vip.unicast_peers,
            source_address=self.cfg.node.address or None,
            resume=resume,
            auth=AdvertAuth(self._advert_key) if self._advert_key else None,
        )
        speaker.set_healthy(healthy)
        return speaker

    def _start_guard(self) -> None:
        self._guard = VipGuard(str(self._vip()), self.interface)
        self._guard.start()

    async def stop(self) -> None:
        """Graceful: a master sends priority 0 and removes the address."""
        if self._boost is not None:
            self._boost.cancel()
            self._boost = None
        speaker, task = self._speaker, self._task
        self._speaker, self._task = None, None
        if speaker is not None:
            with contextlib.suppress(VrrpError, OSError):
                await speaker.stop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, VrrpError, OSError):
                await task
        guard, self._guard = self._guard, None
        if guard is not None:
            await guard.stop()

    @property
    def held(self) -> bool:
        """This machine holds the VIP (its speaker is master with the address on)."""
        return self._speaker is not None and self._speaker.status.holds_vip

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address or None, "held": False}
        if self._holds:
            out["held_away"] = list(self._holds.values())
        if self._speaker is not None:
            from k3snoded.vrrp.auth import REASONS

            st = self._speaker.status
            out.update(
                held=st.holds_vip,
                state=st.state.value,
                priority=st.priority,
                master=st.master,
                transitions=st.transitions,
                authenticated=st.authenticated,
                refused={**dict.fromkeys(REASONS, 0), **dict(st.auth_dropped)},
            )
        return out
