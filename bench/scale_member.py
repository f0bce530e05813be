"""bench/scale.py's worker: ``--count`` real ``FleetRoles`` members in one process.

Each member has its own datastore (``open_datastore``: one connection, one worker thread), a
stand-in supervisor (k3s ready ``--ready-delay`` s after it is wanted) and no VIP. Every second
the worker writes each member's counters to ``<work>/snap-<first>.json``; ``<work>/kill``
names the members to crash (its task cancelled, nothing released); ``<work>/stop`` ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import k3snoded.fleet
from k3snoded.config import (
    Config,
    CoordinationConfig,
    DatastoreConfig,
    K3sConfig,
    NodeConfig,
    RegistrationConfig,
    ServersConfig,
    VipConfig,
)
from k3snoded.datastore import Datastore, open_datastore
from k3snoded.election import ElectionInput, decide
from k3snoded.fleet import FleetRoles
from k3snoded.model import ChildState, RolePreference
from k3snoded.process import ChildSpec, ChildStatus
from k3snoded.vip import VipKeeper

DECIDE_MS: list[float] = []


def _timed_decide(inp: ElectionInput) -> Any:
    t0 = time.perf_counter()
    try:
        return decide(inp)
    finally:
        DECIDE_MS.append((time.perf_counter() - t0) * 1000)


class StandInSupervisor:
    """k3s that is ready ``delay`` s after it is wanted, and stopped at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._status = ChildStatus()
        self._cbs: list[Callable[[ChildStatus], None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._spec: ChildSpec | None = None

    @property
    def status(self) -> ChildStatus:
        return self._status

    def on_change(self, cb: Callable[[ChildStatus], None]) -> None:
        self._cbs.append(cb)

    def want(self, spec: ChildSpec | None) -> None:
        if spec == self._spec:
            return
        self._spec = spec
        if self._timer is not None:
            self._timer.cancel()
        if spec is None:
            self._set(ChildStatus())
            return
        self._set(ChildStatus(state=ChildState.STARTING, pid=1))
        self._timer = asyncio.get_running_loop().call_later(
            self.delay, self._set, ChildStatus(state=ChildState.READY, pid=1, ready=True)
        )

    def _set(self, status: ChildStatus) -> None:
        self._status = status
        for cb in self._cbs:
            cb(status)


class NoVip(VipKeeper):
    async def remove_stale(self) -> None:
        return None

    async def ensure(self, *, run: bool, healthy: bool) -> None:
        return None


class Peers:
    key = b"k" * 32

    def registration(self) -> str | None:
        return None

    def announced_pins(self) -> list[tuple[str, bool, bool]]:
        return []


class Rows:
    """Member rows returned to this member (outermost read call only)."""

    def __init__(self, ds: Datastore, *, everyone: bool = False) -> None:
        self.count = 0
        self._depth = 0
        for name in ("sync", "members", "members_seen_by"):
            setattr(ds, name, self._wrap(getattr(ds, name)))
        if everyone:  # the baseline: every member reads every row, as before members_seen_by
            sync, members = ds.sync, ds.members
            setattr(ds, "sync", lambda rec, everyone=True: sync(rec))  # noqa: B010
            setattr(ds, "members_seen_by", lambda name: members())  # noqa: B010

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(*args: Any, **kw: Any) -> Any:
            self._depth += 1
            try:
                rows = await fn(*args, **kw)
            finally:
                self._depth -= 1
            if self._depth == 0:
                self.count += len(rows)
            return rows

        return counted


class Timed(FleetRoles):
    """FleetRoles, recording the wall time of each coordinator step that wrote a decision."""

    step_ms: list[float]

    async def _coordinate(self, read_everyone: bool) -> None:
        before = self.counters["decisions"]
        t0 = time.perf_counter()
        await super()._coordinate(read_everyone)
        if self.counters["decisions"] != before:
            self.step_ms.append((time.perf_counter() - t0) * 1000)


def config(name: str, i: int, eligible: bool, endpoint: str, servers: int, root: Path) -> Config:
    d = root / name
    for sub in ("state", "run", "k3s"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    return Config(
        node=NodeConfig(
            name=name,
            role=RolePreference.AUTO if eligible else RolePreference.AGENT,
            address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
            interface="eth0",
            state_dir=d / "state",
            run_dir=d / "run",
        ),
        k3s=K3sConfig(binary=Path("/usr/local/bin/k3s"), data_dir=d / "k3s"),
        datastore=DatastoreConfig(endpoint=endpoint),
        coordination=CoordinationConfig(),
        servers=ServersConfig(count=servers),
        registration=RegistrationConfig(
            address="198.18.0.100", vip=VipConfig(enabled=False, interface="eth0")
        ),
    )


async def run_members(args: argparse.Namespace) -> None:
    k3snoded.fleet.decide = _timed_decide  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    root = Path(tempfile.mkdtemp(prefix="k3snoded-scale-"))
    members: dict[str, tuple[Timed, Rows, asyncio.Task[None]]] = {}
    for i in range(args.first, args.first + args.count):
        name = f"m{i:04d}"
        cfg = config(name, i, i < args.eligible, args.endpoint, args.servers, root)
        ds = open_datastore(cfg.datastore, cfg.coordination)
        rows = Rows(ds, everyone=args.baseline)
        roles = Timed(
            cfg,
            StandInSupervisor(args.ready_delay),
            vip=NoVip(replace(cfg)),
            peers=Peers(),
            datastore=ds,
        )
        roles.step_ms = []
        members[name] = (roles, rows, loop.create_task(roles.run(), name=name))
    killed: set[str] = set()
    snap = args.work / f"snap-{args.first}.json"
    for _ in range(100_000):  # bounded: ~28 h of 1 s ticks
        if (args.work / "stop").exists():
            break
        with contextlib.suppress(OSError):
            for victim in (args.work / "kill").read_text().split():
                if victim in members and victim not in killed:
                    killed.add(victim)
                    members[victim][2].cancel()  # a crash: nothing released, nothing said
        out = {
            name: {
                "statements": roles.ds.statements,
                "rows": rows.count,
                "coordinator": roles.is_coordinator,
                "decide_ms": DECIDE_MS[-50:] if roles.is_coordinator else [],
                "decision_step_ms": roles.step_ms[-5:],
            }
            for name, (roles, rows, _task) in members.items()
            if name not in killed
        }
        tmp = snap.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(snap)
        await asyncio.sleep(1.0)
    for _roles, _rows, task in members.values():
        task.cancel()
    await asyncio.gather(*(t for _r, _c, t in members.values()), return_exceptions=True)
    for roles, _rows, _task in members.values():
        with contextlib.suppress(Exception):
            await roles.ds.close()
