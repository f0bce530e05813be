"""Planned operations' state, kept in the datastore's flags table so it survives restarts.

One JSON document per flag; each flag has exactly one kind of writer:

* ``ops/pause``: written by the daemon an operator asked (CLI or signed peer request); the
  fleet is paused: the coordinator makes no role changes.
* ``ops/maint/<node>``: written by the daemon an operator asked; ``<node>`` is (or is no
  longer) in maintenance.
* ``ops/rollout``: the coordinator only (holding a fresh coordinator lease); a rolling k3s
  upgrade: its target, its state and the machines allowed to upgrade now.
* ``ops/upgrade/<node>``: ``<node>`` itself; its progress towards the rollout's target.
* ``ops/vip``: the server that just took the VIP; who holds it (for the rollout's order only:
  VRRP decides who holds it, not this).
* ``ops/switchover``: the VIP holder that carried one out; the last switchover.

Times (``at``, ``since``) are the writer's wall clock, for people; no decision compares them
across machines. Names longer than the flag column allows are replaced by a hash (the document
names the node). A document that does not parse (a newer k3snoded, a hand edit) is ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import typing
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

PAUSE = "ops/pause"
ROLLOUT = "ops/rollout"
VIP = "ops/vip"
SWITCHOVER = "ops/switchover"
MAINT_PREFIX = "ops/maint/"
UPGRADE_PREFIX = "ops/upgrade/"
FLAG_WIDTH = 64  # k3snoded_flags.name is VARCHAR(64)

# Rollout states and the steps of one machine's upgrade.
RUNNING, HALTED, DONE = "running", "halted", "done"
STEP_DONE, STEP_FAILED = "done", "failed"
EARLY = ("", "granted", "vip", "draining", "downloading")  # an upgrade's steps before k3s stops

D = TypeVar("D")


def node_flag(prefix: str, node: str) -> str:
    """``prefix + node``, or ``prefix`` + a hash of the name when that is too long."""
    name = prefix + node
    if len(name) <= FLAG_WIDTH:
        return name
    return prefix + hashlib.sha256(node.encode()).hexdigest()[: FLAG_WIDTH - len(prefix)]


@dataclass(frozen=True)
class Pause:
    paused: bool
    by: str = ""
    at: float = 0.0


@dataclass(frozen=True)
class Maintenance:
    node: str
    on: bool
    by: str = ""
    at: float = 0.0


@dataclass(frozen=True)
class Rollout:
    """The coordinator's record of a rolling upgrade to ``target``."""

    target: str
    state: str = RUNNING  # running | halted | done
    by: str = ""  # the coordinator that started it
    started_at: float = 0.0
    grants: tuple[str, ...] = ()  # machines allowed to upgrade now
    halted_node: str = ""
    halted_error: str = ""
    note: str = ""  # the coordinator's last sentence about it


@dataclass(frozen=True)
class Progress:
    """One machine's own upgrade record."""

    node: str
    target: str
    from_version: str = ""
    step: str = ""
    since: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class VipHolder:
    node: str
    since: float = 0.0


@dataclass(frozen=True)
class Switchover:
    id: str
    by: str = ""
    at: float = 0.0
    from_node: str = ""
    to_node: str = ""
    result: str = ""


@dataclass(frozen=True)
class OpsView:
    """Everything the flags say about planned operations."""

    pause: Pause | None = None
    maintenance: Mapping[str, Maintenance] = field(default_factory=dict)
    rollout: Rollout | None = None
    progress: Mapping[str, Progress] = field(default_factory=dict)
    vip: VipHolder | None = None
    switchover: Switchover | None = None

    @property
    def paused(self) -> bool:
        return self.pause is not None and self.pause.paused

    def in_maintenance(self, node: str) -> bool:
        m = self.maintenance.get(node)
        return m is not None and m.on

    @property
    def under_maintenance(self) -> frozenset[str]:
        return frozenset(n for n, m in self.maintenance.items() if m.on)


def dump(doc: Any) -> str:
    """A document as the JSON stored in its flag."""
    return json.dumps(dataclasses.asdict(doc), sort_keys=True, separators=(",", ":"))


@functools.cache
def _hints(cls: Hashable) -> dict[str, Any]:
    """A document class's resolved field types (read-only; resolving them costs more than
    parsing a document)."""
    return typing.get_type_hints(cls)


def load(cls: type[D], text: str) -> D | None:
    """A document of type ``cls`` from its JSON, or None when it does not parse. Unknown keys
    are ignored (a newer writer); a known key of the wrong type voids the document."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    hints = _hints(typing.cast(Hashable, cls))  # a class is hashable; mypy does not know
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value, want = data[f.name], hints[f.name]
        if want is bool:
            ok = isinstance(value, bool)
        elif want is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif want is str:
            ok = isinstance(value, str)
        else:  # tuple[str, ...]
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value
        if not ok:
            return None
        values[f.name] = value
    try:
        return cls(**values)
    except TypeError:  # a required field is missing
        return None


def parse(flags: Mapping[str, str]) -> OpsView:
    """The operations the flags describe; documents that do not parse are skipped."""
    maintenance: dict[str, Maintenance] = {}
    progress: dict[str, Progress] = {}
    for name, text in flags.items():
        if name.startswith(MAINT_PREFIX):
            m = load(Maintenance, text)
            if m is not None and node_flag(MAINT_PREFIX, m.node) == name:
                maintenance[m.node] = m
        elif name.startswith(UPGRADE_PREFIX):
            p = load(Progress, text)
            if p is not None and node_flag(UPGRADE_PREFIX, p.node) == name:
                progress[p.node] = p
    return OpsView(
        pause=_one(flags, PAUSE, Pause),
        maintenance=maintenance,
        rollout=_one(flags, ROLLOUT, Rollout),
        progress=progress,
        vip=_one(flags, VIP, VipHolder),
        switchover=_one(flags, SWITCHOVER, Switchover),
    )


def _one(flags: Mapping[str, str], name: str, cls: type[D]) -> D | None:
    text = flags.get(name)
    if text is None:
        return None
    doc = load(cls, text)
    if doc is None:
        log.debug("ignoring the flag %s: it does not parse", name)
    return doc
