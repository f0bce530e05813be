"""The HA loop over a shared datastore (D1, D2): observe → decide → act, one sentence per cycle.

Every cycle each machine (1) writes its heartbeat, (2) reads the member table with the roles the
coordinator assigned, (3) if eligible, holds or tries the ``coordinator`` lease and, while holding
it, runs the pure ``election.decide`` and writes the roles, (4) reconciles its own k3s to its
assigned role. A server starts only after the cluster is bootstrapped, or while it holds the
``bootstrap`` lease (the first server starts alone, D2).

Datastore outage policy: no role changes, k3s left running, the VIP left to VRRP (which follows
the local API's health, not the datastore); the loop retries every cycle and recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from k3snoded import capin
from k3snoded.atomic import read_json_state, write_json_state
from k3snoded.config import Config, CoordinationConfig
from k3snoded.datastore import (
    BOOTSTRAP_LEASE,
    BOOTSTRAPPED_FLAG,
    COORDINATOR_LEASE,
    Datastore,
    MemberRecord,
    MemberRow,
    open_datastore,
)
from k3snoded.datastore.startup import prepare
from k3snoded.election import ElectionInput, decide
from k3snoded.errors import DatastoreError
from k3snoded.model import ChildState, Member, Role, RolePreference
from k3snoded.roles import ChildControl, RoleSource, Wanted, remembered_role
from k3snoded.supervisor import ChildStatus
from k3snoded.vip import VipKeeper

if TYPE_CHECKING:
    from k3snoded.operations import Operations

log = logging.getLogger("k3snoded.fleet")

VERIFIER_FLAG = "fleet_verifier"  # a verifier of the fleet's cluster key (token + name)
FAST_CYCLE = 0.5  # seconds between cycles while the fleet converges


class PeerView(Protocol):
    """What the fleet loop needs from discovery (``peers.PeerBook``)."""

    @property
    def key(self) -> bytes: ...

    def registration(self) -> str | None: ...

    def announced_pins(self) -> list[tuple[str, bool, bool]]: ...


def _now() -> float:
    """The loop's clock: ``time.monotonic()`` in the daemon, virtual time in the simulator."""
    return asyncio.get_running_loop().time()


class FleetRoles(RoleSource):
    def __init__(
        self,
        cfg: Config,
        supervisor: ChildControl,
        *,
        vip: VipKeeper,
        peers: PeerView,
        datastore: Datastore | None = None,
    ) -> None:
        super().__init__(cfg, supervisor, key=peers.key)
        self.ds = datastore or open_datastore(cfg.datastore, cfg.coordination)
        self.vip = vip
        self.peers = peers
        self.me = cfg.node.name
        self.can_coordinate = cfg.node.role is not RolePreference.AGENT
        self.eligible = self.can_coordinate  # what the heartbeat says; False while leaving
        self.leaving = False
        self.left = False
        self.coordinator: str | None = None
        self.is_coordinator = False
        self.bootstrapped_by: str | None = None
        self.members: list[Member] = []
        self.assigned: dict[str, Role] = {}
        self.versions: dict[str, str] = {}  # each member's k3s release, from its heartbeat
        self.ops: Operations | None = None  # planned operations (operations.py), if attached
        self.counters: dict[str, float] = {"decisions": 0, "renew_seconds": 0.0}
        self._outage_logged = False
        self._last_try = 0.0
        self._wake = asyncio.Event()
        # Per member: its last heartbeat stamp and when (local monotonic time) we first saw it.
        self._seen: dict[str, tuple[float, float]] = {}
        self._unready_since: dict[str, float] = {}  # assigned servers seen without a ready k3s
        self._failed_until: dict[str, float] = {}  # demoted for that: ranked last until then
        self._blind = True  # no good read since start-up or since the last failed cycle
        # The bootstrap lease (D2): ours until this local time; no k3s before _boot_wait_until;
        # no attempt before _boot_pause_until (after our k3s failed to come up).
        self._boot_until: float | None = None
        self._boot_wait_until = 0.0
        self._boot_pause_until = 0.0
        self._boot_failed = False
        self._boot_taken = False  # we took the bootstrap lease and have not released it
        self._fence_timer: asyncio.TimerHandle | None = None
        self._bootstrap_noted = False
        self._task: asyncio.Task[Any] | None = None  # the loop, ended first by stop()
        self._ca_published = False  # our ready k3s's CA hash compared with the fleet's
        supervisor.on_change(self._child_changed)

    def _child_changed(self, status: ChildStatus) -> None:
        """k3s became ready (or stopped being): act now, not at the next cycle."""
        self.vip.health(status.ready)
        self._ca_published = self._ca_published and status.ready
        bootstrapping = self.bootstrapped_by is None and self._boot_until is not None
        if bootstrapping and self.wanted.role is Role.SERVER and status.state is ChildState.BACKOFF:
            self._boot_failed = True  # exited, or not ready within k3s.ready_timeout
        self._wake.set()

    def _at_rest(self) -> bool:
        """Nothing is converging: this node runs its role, ready, every member has one, and no
        member's heartbeat is late (a late one may be a dead server about to be replaced)."""
        if self.wanted.role is Role.NONE or not self.supervisor.status.ready:
            return False
        c = self.cfg.coordination
        late = 2 * c.renew_interval
        if any(late < m.heartbeat_age <= c.dead_after + late for m in self.members):
            return False
        return not self.is_coordinator or all(m.name in self.assigned for m in self.members)

    def wake(self) -> None:
        """Run a cycle now (a planned operation changed something)."""
        self._wake.set()

    def lease_age(self) -> float:
        """Seconds since the last coordinator-lease statement was sent."""
        return _now() - self._last_try

    # ---- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        self._task = asyncio.current_task()
        await self.load_pin()
        # ``k3s --version`` (an exec) while the datastore is prepared: the first heartbeat,
        # which carries the release, waits for the slower of the two, not for both.
        version = asyncio.create_task(self.ops.start()) if self.ops is not None else None
        try:
            await self._start()
            if version is not None:
                await version
        finally:
            if version is not None and not version.done():
                version.cancel()
        await self._loop()

    async def _start(self) -> None:
        """What a previous daemon left (VIP, role, an unbootstrapped k3s), then the
        datastore's preflight."""
        await self.vip.remove_stale()
        before = await asyncio.to_thread(remembered_role, self.cfg)
        if before is not None and before.role is Role.AGENT and before.registration:
            # An agent needs no datastore: resume at once; the coordinator may change it later.
            await self.apply(
                Wanted(Role.AGENT, before.registration, "resuming the agent role it had before")
            )
        elif before is not None and before.role is Role.SERVER:
            # Not started (a server waits for the coordinator), but remembered: a k3s server
            # left running by the previous daemon is adopted, and if it came up as the first
            # server while no daemon watched, _bootstrap records that instead of stopping it.
            self.wanted = Wanted(Role.SERVER, before.registration, before.reason)
            if not await asyncio.to_thread(read_json_state, self._bootstrap_file()):
                # It may be an unbootstrapped first server whose lease nobody renews now: fence
                # it as its holder would have, unless the datastore shows the bootstrap first.
                self._boot_until = _now() + self.cfg.coordination.lease_ttl
                self._arm_fence()
        await self._preflight()

    async def _loop(self) -> None:
        interval = self.cfg.coordination.renew_interval
        while not self.left:
            started = _now()
            try:
                await self._cycle()
                if self._outage_logged:
                    log.info("datastore reachable again; resuming coordination")
                    self._outage_logged = False
            except DatastoreError as err:
                if not self._outage_logged:
                    log.warning(
                        "datastore unavailable (%s): keeping role %s and k3s running, "
                        "no role changes until it is back",
                        err,
                        self.wanted.role.value,
                    )
                    self._outage_logged = True
                self.is_coordinator = False
                self._blind = True
            await self.vip.ensure(
                run=self.wanted.role is Role.SERVER, healthy=self.supervisor.status.ready
            )
            self._stepped()
            # At rest one cycle per renew interval (the statement budget); while converging,
            # a fast cycle, and a change of the local k3s wakes the loop at once.
            period = interval if self._at_rest() else min(FAST_CYCLE, interval)
            elapsed = _now() - started
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, period - elapsed))

    async def _preflight(self) -> None:
        """Preflight and schema, retried until the datastore answers; then make sure this
        machine belongs to the fleet that uses this datastore.

        Retries are never further apart than a heartbeat cycle: a machine whose daemon
        restarted during an outage must heartbeat again well within ``dead_after`` of the
        datastore's return, or the fleet replaces it (its k3s, adopted, is fine)."""
        if self.wanted.role is Role.NONE:
            self.wanted = Wanted(Role.NONE, "", "waiting for the datastore to answer")
        retry = self.cfg.coordination.renew_interval
        await prepare(self.ds, max_delay=retry)
        log.info("datastore ready: %s", self.ds.description)
        failing, refused = "", False
        for _attempt in range(1_000_000):
            try:
                same = await self._same_fleet()
            except DatastoreError as err:  # not an answer: ask again, claim nothing
                if str(err) != failing:
                    log.warning("cannot check the fleet's token verifier (%s); retrying", err)
                    failing = str(err)
                await asyncio.sleep(retry)
                continue
            if same:
                return
            if not refused:
                log.error(
                    "refusing to join: this machine's cluster token or cluster name differs from "
                    "those of the fleet in %s (no heartbeat, no role); fix "
                    "cluster.token_file / cluster.name and restart k3snoded",
                    self.ds.description,
                )
                refused = True
            await self.apply(
                Wanted(Role.NONE, "", "refused: the cluster token or name differs from the fleet's")
            )
            await asyncio.sleep(30.0)

    async def _same_fleet(self) -> bool:
        """Compare a verifier of our cluster key with the one the fleet stored (the first
        machine stores it). Datastore credentials alone do not make a machine a member: a
        machine with another token would otherwise be elected and fail k3s's bootstrap."""
        mine = hmac.new(self.peers.key, b"k3snoded token check", hashlib.sha256).hexdigest()
        # Insert-if-absent: of two first machines with different tokens, exactly one wins.
        stored = await self.ds.claim_flag(VERIFIER_FLAG, mine)
        return hmac.compare_digest(stored, mine)

    async def _cycle(self) -> None:
        t0 = _now()
        child = self.supervisor.status
        # Only the coordinator decides from every row (and a machine that is leaving counts the
        # eligible ones); any other member reads its own row, the servers and the coordinator's,
        # so its cost does not grow with the fleet.
        everyone = self.is_coordinator or self.leaving
        rows = await self.ds.sync(
            MemberRecord(
                name=self.me,
                address=self.cfg.node.address,
                api_port=self.cfg.api.port,
                preference=self.cfg.node.role,
                # A machine whose k3s failed to come up as the first server steps out of the
                # running for a while, so the coordinator gives its seat to another.
                eligible=self.eligible
                and _now() >= self._boot_pause_until
                and not (self.ops is not None and self.ops.ineligible),
                role=self.wanted.role,
                ready=child.ready,
                k3s_version=self.ops.version if self.ops is not None else "",
            ),
            everyone=everyone,
        )
        self.counters["renew_seconds"] = _now() - t0
        self._take(rows)
        if self.can_coordinate:
            await self._coordinate(everyone)
        if self.leaving:
            await self._hand_over()
        else:
            await self._reconcile()
            if self.ops is not None:
                await self.ops.after_cycle()

    def _take(self, rows: list[MemberRow]) -> None:
        self.members = self._observe(rows)
        self.assigned = {r.member.name: r.assigned for r in rows if r.assigned is not None}
        self.versions = {r.member.name: r.k3s_version for r in rows}

    async def _coordinate(self, read_everyone: bool) -> None:
        ttl = self.cfg.coordination.lease_ttl
        now = _now()
        if lease_due(now - self._last_try, holder=self.is_coordinator, c=self.cfg.coordination):
            self._last_try = now  # taken before the statement: the lease is at least this new
            was = self.is_coordinator
            self.is_coordinator = await self.ds.try_lease(COORDINATOR_LEASE, self.me, ttl)
            if self.is_coordinator and not was:
                log.info("acquired the coordinator lease")
            elif was and not self.is_coordinator:
                log.warning("lost the coordinator lease")
        if not self.is_coordinator:
            await self._learn_coordinator()
            return
        if not read_everyone:  # just took the lease over: decide from every row, not a view
            self._take(await self.ds.members())
        self.coordinator = self.me
        inp = ElectionInput(
            members=self.members,
            assigned=self.assigned,
            count=self.cfg.servers.count,
            dead_after=self.cfg.coordination.dead_after,
            unready=self._unready(),
            unready_after=self.cfg.k3s.ready_timeout,
            avoid=frozenset(n for n, t in self._failed_until.items() if t > _now()),
        )
        if self.ops is not None and not await self.ops.may_decide():
            return  # paused by an operator: no role changes (the VIP still follows health)
        d = self.ops.decide(inp) if self.ops is not None else decide(inp)
        if d.roles != self.assigned:
            if await self.ds.assign_roles(d.roles, self.me):
                for name in d.failed:
                    self._failed_until[name] = _now() + 2 * self.cfg.k3s.ready_timeout
                self.counters["decisions"] += 1
                log.info("coordinator decision: %s", d.reason)
                self.assigned = dict(d.roles)
            else:
                self.is_coordinator = False

    async def reconfigure(self, cfg: Config) -> None:
        """A reload (daemon.py refuses one that changes a restart-only key): eligibility,
        timings and counts are read from ``self.cfg`` every cycle; the k3s command line is
        re-applied (k3s restarts when it changed) and the loop runs at once."""
        self.cfg = cfg
        self.can_coordinate = cfg.node.role is not RolePreference.AGENT
        if not self.leaving:
            self.eligible = self.can_coordinate
        if self.is_coordinator and not self.can_coordinate:
            self.is_coordinator = False
            try:
                await self.ds.release_lease(COORDINATOR_LEASE, self.me)
            except DatastoreError as err:
                log.warning("could not release the coordinator lease: %s", err)
        w = self.wanted
        if w.role is Role.SERVER:
            w = Wanted(Role.SERVER, cfg.registration.address or cfg.node.address, w.reason)
        elif w.role is Role.AGENT and cfg.registration.address:
            w = Wanted(Role.AGENT, cfg.registration.address, w.reason)
        await self.apply(w, force=True)
        self._wake.set()

    async def _learn_coordinator(self) -> None:
        """Who holds the coordinator lease, for status: read only when unknown or when the
        known holder's heartbeat is late, so it costs nothing at rest."""
        if self.coordinator == self.me:
            self.coordinator = None
        late = 2 * self.cfg.coordination.renew_interval
        known = next((m for m in self.members if m.name == self.coordinator), None)
        if known is not None and known.heartbeat_age <= late:
            return
        lease = await self.ds.lease(COORDINATOR_LEASE)
        self.coordinator = lease.holder if lease else None

    def _unready(self) -> dict[str, float]:
        """Seconds each assigned server has been seen running a k3s server that is not ready
        (a server still waiting for the bootstrap runs none; reset by an outage, like
        heartbeats: nobody was watched)."""
        now = _now()
        since = {}
        for m in self.members:
            if self.assigned.get(m.name) is Role.SERVER and m.role is Role.SERVER and not m.ready:
                since[m.name] = self._unready_since.get(m.name, now)
        self._unready_since = since
        return {name: now - t for name, t in since.items()}

    def _observe(self, rows: list[MemberRow]) -> list[Member]:
        """The members with ``heartbeat_age`` = local monotonic time since their heartbeat
        stamp last changed. The database clock only stamps heartbeats; whether a member is
        alive never depends on its rate or its steps (a forward step made every member but the
        writer look dead at once; a backward one kept the dead alive). After a failed cycle (an
        outage, or at start-up) nobody was watched, so every member gets a full ``dead_after``
        again: judging right after an outage would demote every server at once."""
        now = _now()
        seen: dict[str, tuple[float, float]] = {}
        out = []
        for r in rows:
            name = r.member.name
            prev = self._seen.get(name)
            since = prev[1] if prev and prev[0] == r.stamp and not self._blind else now
            seen[name] = (r.stamp, since)
            out.append(dataclasses.replace(r.member, heartbeat_age=now - since))
        if self._blind:
            self._unready_since.clear()
        self._seen, self._blind = seen, False
        return out

    async def _reconcile(self) -> None:
        mine = self.assigned.get(self.me)
        if mine is not Role.SERVER and await self._leave_bootstrap():
            return
        override = self.ops.override(mine) if self.ops is not None else None
        if override is not None:
            await self.apply(override)
            return
        if mine is None:
            await self.apply(Wanted(Role.NONE, "", "waiting for the coordinator to assign a role"))
            return
        if mine is Role.AGENT:
            if self.pin.source in ("", "state"):  # the flags hold it once a server was ready
                capin.learn_flags(self.pins, await self.ds.flags())
            self.pins.check_peers(self.peers.announced_pins())
            registration = self._agent_registration()
            if not registration:
                await self.apply(
                    Wanted(Role.NONE, "", "agent, but no server is ready to register to")
                )
                return
            await self.apply(Wanted(Role.AGENT, registration, "the coordinator assigned agent"))
            return
        # A server's command line depends on this machine's config alone: --tls-san is the
        # registration address (or nothing more than k3s's own names and node IP).
        await self._reconcile_server(self.cfg.registration.address or self.cfg.node.address)

    async def _reconcile_server(self, registration: str) -> None:
        if self.bootstrapped_by is None:
            flags = await self.ds.flags()
            capin.learn_flags(self.pins, flags)
            self.bootstrapped_by = flags.get(BOOTSTRAPPED_FLAG)
        if self.bootstrapped_by is not None:
            self._boot_until, self._boot_taken = None, False
            await self._remember_bootstrap()
            await self.apply(Wanted(Role.SERVER, registration, "the coordinator assigned server"))
            await self._publish_ca()
            return
        await self._bootstrap(registration)

    def _bootstrap_file(self) -> Path:
        return self.cfg.node.state_dir / "bootstrapped.json"

    async def _remember_bootstrap(self) -> None:
        """Note on disk that this cluster is bootstrapped: a daemon restarted during an outage
        then knows its adopted k3s server is no first start to fence."""
        if not self._bootstrap_noted and self.bootstrapped_by is not None:
            self._bootstrap_noted = True
            path, by = self._bootstrap_file(), self.bootstrapped_by
            await asyncio.to_thread(write_json_state, path, {"bootstrapped_by": by})

    async def _publish_ca(self) -> None:
        """Once per readiness of our k3s server: its CA hash becomes the fleet's if none is,
        and is compared with it (capin.publish)."""
        ready = self.wanted.role is Role.SERVER and self.supervisor.status.ready
        if ready and not self._ca_published:
            self._ca_published = await capin.publish(self.pins, self.ds, self.cfg)

    async def _bootstrap(self, registration: str) -> None:
        """The first server starts alone (D2), and the bootstrap lease fences it: its holder
        stops its unbootstrapped k3s when it cannot renew in time (``_fence``), a new holder
        that took the lease over from another waits until that one's k3s is surely gone, and a
        holder whose k3s fails to come up lets someone else try."""
        c, k3s_cfg = self.cfg.coordination, self.cfg.k3s
        if self._came_up():
            await self._note_bootstrapped()
            await self.apply(Wanted(Role.SERVER, registration, "the coordinator assigned server"))
            return
        now = _now()
        if now < self._boot_pause_until:
            await self._stop_bootstrapping("its k3s failed to start; letting another server try")
            return
        holding = self._boot_until is not None
        prior = None if holding else await self.ds.last_holder(BOOTSTRAP_LEASE)
        before = _now()
        if not await self.ds.try_lease(BOOTSTRAP_LEASE, self.me, c.lease_ttl):
            self._boot_until = None
            if self._came_up():  # while we asked (a slow datastore): it is the first server
                await self._note_bootstrapped()
                await self.apply(
                    Wanted(Role.SERVER, registration, "the coordinator assigned server")
                )
                return
            lease = await self.ds.lease(BOOTSTRAP_LEASE)
            holder = lease.holder if lease else "another server"
            await self._stop_bootstrapping(f"waiting for {holder} to bootstrap the cluster first")
            return
        if not holding and prior not in (None, self.me):
            wait = c.lease_ttl + k3s_cfg.stop_timeout
            self._boot_wait_until = _now() + wait
            log.warning(
                "took the bootstrap lease over from %s, which did not release it: waiting %.0f s "
                "for its unbootstrapped k3s to be stopped before starting ours",
                prior,
                wait,
            )
        self._boot_until = before + c.lease_ttl
        self._boot_taken = True
        self._arm_fence()
        if self._boot_failed:
            self._boot_failed = False
            self._boot_pause_until = _now() + k3s_cfg.ready_timeout
            log.warning("k3s did not come up as the first server: letting another server try")
            await self._stop_bootstrapping("its k3s failed to start; letting another server try")
            return
        if _now() < self._boot_wait_until:
            await self.apply(
                Wanted(Role.NONE, "", f"waiting out {prior}'s attempt to bootstrap the cluster")
            )
            return
        if self.wanted.role is not Role.SERVER:  # before k3s makes its node password
            await capin.claim_agent_token(self.pins, self.ds, self.cfg, self.key)
        await self.apply(
            Wanted(Role.SERVER, registration, "bootstrapping the cluster (first server)")
        )

    def _came_up(self) -> bool:
        """Our k3s server has been ready (READY: confirmed once; ``ready`` itself follows
        /readyz, which fails while the datastore is slow): it has the cluster's CA, so the
        cluster is bootstrapped, whatever became of the lease meanwhile."""
        return self.wanted.role is Role.SERVER and self.supervisor.status.state is ChildState.READY

    async def _note_bootstrapped(self) -> None:
        await self.ds.set_flag(BOOTSTRAPPED_FLAG, self.me)
        if self._boot_taken:
            await self.ds.release_lease(BOOTSTRAP_LEASE, self.me)
        self.bootstrapped_by, self._boot_until, self._boot_taken = self.me, None, False
        log.info("bootstrapped the cluster; other servers may start now")
        await self._remember_bootstrap()
        # Now, not at the next cycle: every agent waits for the CA hash, and this server is at
        # rest from here on (its next cycle is a renew interval away).
        await self._publish_ca()

    async def _stop_bootstrapping(self, reason: str) -> None:
        """Not (or no longer) the first server: no k3s until the cluster is bootstrapped. A
        lease we took is released once our k3s is gone (even after the fence gave it up: the
        statement frees it only while it names us), so the next one need not wait it out."""
        self._boot_failed = False  # this attempt is over; a later one starts afresh
        await self.apply(Wanted(Role.NONE, "", reason))
        held = self._boot_taken or self._boot_until is not None
        if held and self.supervisor.status.pid is None:
            self._boot_until, self._boot_taken = None, False
            await self.ds.release_lease(BOOTSTRAP_LEASE, self.me)

    async def _leave_bootstrap(self) -> bool:
        """No longer assigned server during our first-server attempt: stop the unbootstrapped
        k3s and release the bootstrap lease once it is gone, rather than leaving the next first
        server to wait the lease out. True while that is under way (no other role yet)."""
        if not self._boot_taken or self.bootstrapped_by is not None:
            return False
        if self._came_up():  # it came up as we were demoted: record it, then follow the role
            await self._note_bootstrapped()
            return False
        await self._stop_bootstrapping("no longer assigned server: ending its first start")
        return self._boot_taken

    def _arm_fence(self) -> None:
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        if self._boot_until is not None:
            loop = asyncio.get_running_loop()
            self._fence_timer = loop.call_at(self._boot_until, self._fence)

    def _fence(self) -> None:
        """The bootstrap lease may have expired (no renewal went through in a TTL): stop an
        unbootstrapped k3s at once, whatever the loop is waiting for."""
        self._fence_timer = None
        if self.bootstrapped_by is not None or self._boot_until is None:
            return
        if self._task is not None and self._task.done():
            return  # the daemon is stopping; nothing runs any more
        if _now() < self._boot_until:
            self._arm_fence()
            return
        if self.supervisor.status.state is ChildState.READY:
            return  # it came up: the cluster is bootstrapped; the loop records it
        self._boot_until = None
        if self.wanted.role is Role.SERVER:
            log.warning(
                "could not renew the bootstrap lease within its TTL: stopping the unbootstrapped "
                "k3s so that another server can bootstrap the cluster"
            )
            self.wanted = Wanted(Role.NONE, "", "lost the bootstrap lease: k3s stopped")
            self.supervisor.want(None)

    # ---- leaving the fleet on purpose (k3snoded leave) --------------------------------------
    async def leave(self) -> None:
        """Hand over: stop being eligible, keep running until a replacement is ready, then stop
        k3s, release the VIP and the coordinator lease and delete our member row."""
        if not self.leaving:
            log.info("leaving the fleet: handing over first")
        self.leaving = True
        self.eligible = False

    def _handed_over(self) -> bool:
        if self.assigned.get(self.me) is Role.SERVER:
            return False  # the coordinator has not yet decided without us
        others = [
            m
            for m in self.members
            if m.name != self.me and m.heartbeat_age <= self.cfg.coordination.dead_after
        ]
        servers = [m for m in others if self.assigned.get(m.name) is Role.SERVER]
        ready = [m for m in servers if m.ready and m.role is Role.SERVER]
        possible = min(self.cfg.servers.count, len([m for m in others if m.eligible]))
        return len(ready) >= possible

    async def _hand_over(self) -> None:
        if self.wanted.role is Role.SERVER and not self._handed_over():
            await self.apply(
                Wanted(Role.SERVER, self.wanted.registration, "leaving: waiting for a replacement")
            )
            return
        await self.vip.stop()
        await self.apply(Wanted(Role.NONE, "", "left the fleet (k3snoded leave)"))
        if self.is_coordinator:
            await self.ds.release_lease(COORDINATOR_LEASE, self.me)
            self.is_coordinator = False
        await self.ds.remove_member(self.me)
        self.left = True
        log.info("left the fleet: k3s stopped, member row removed; stop or disable the unit now")

    def _agent_registration(self) -> str:
        """Where an agent joins: the registration address; without one, the server it joined
        when it started (a running agent follows the servers through k3s's own load balancer,
        so it is not restarted when that server dies), else the first ready server."""
        if self.cfg.registration.address:
            return self.cfg.registration.address
        if self.wanted.role is Role.AGENT and self.wanted.registration:
            return self.wanted.registration
        ready = sorted(
            m.address
            for m in self.members
            if self.assigned.get(m.name) is Role.SERVER
            and m.role is Role.SERVER
            and m.ready
            and m.heartbeat_age <= self.cfg.coordination.dead_after
        )
        return ready[0] if ready else self.peers.registration() or ""

    # ---- lifecycle and views -------------------------------------------------------------
    async def stop(self) -> None:
        """End the loop first, then release what it holds (VIP, coordinator lease) and close
        the datastore: a loop still running could take the lease again or restart the VRRP
        speaker after they were released."""
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        if self.ops is not None:
            await self.ops.stop()
        await self.vip.stop()
        # Released whether or not this machine still believes it holds it (a failed renewal
        # may have lied): the statement frees it only if the row names us. The bootstrap
        # lease is not released here: k3s stops after this, and a successor must wait it out.
        if self.can_coordinate:
            try:
                await self.ds.release_lease(COORDINATOR_LEASE, self.me)
            except DatastoreError as err:
                log.warning("could not release the coordinator lease: %s", err)
        await self.ds.close()

    def status(self) -> dict[str, Any]:
        peers = [
            {
                "name": m.name,
                "address": m.address,
                "role": (self.assigned.get(m.name) or m.role).value,
                "running": m.role.value,
                "ready": m.ready,
                "heartbeat_age": round(m.heartbeat_age, 2),
                "alive": m.heartbeat_age <= self.cfg.coordination.dead_after,
                "eligible": m.eligible,
            }
            for m in sorted(self.members, key=lambda m: m.name)
        ]
        return {
            "vip": self.vip.status(),
            "peers": peers,
            "coordinator": self.me if self.is_coordinator else self.coordinator,
            "bootstrapped_by": self.bootstrapped_by,
            "ca_pin": self.pins.status(),
            "leaving": "left" if self.left else ("handing over" if self.leaving else None),
            # The coordinator lists every member; any other member itself, the servers and
            # the coordinator (what it reads: Datastore.members_seen_by).
            "peers_scope": "all" if self.is_coordinator or self.leaving else "servers",
            "counters": {**self.counters, "statements": self.ds.statements},
            "operations": self.ops.status() if self.ops is not None else None,
        }


def lease_due(since: float, *, holder: bool, c: CoordinationConfig) -> bool:
    """Whether to send the coordinator-lease statement this cycle, ``since`` seconds after the
    last one. A holder renews only when waiting one more cycle could let the lease run out (one
    renewal attempt of 2 x retry_timeout must still fit in the TTL): with the defaults, every
    second cycle. Others try once per half TTL. Both keep the statement budget at rest."""
    if holder:
        return since + c.renew_interval + 2 * c.retry_timeout > c.lease_ttl
    return since >= c.lease_ttl / 2
