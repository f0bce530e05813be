"""Immutable values shared across the daemon. Imports nothing internal."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RolePreference(enum.Enum):
    """What the operator allows a machine to be (``node.role``)."""

    AUTO = "auto"
    SERVER = "server"
    AGENT = "agent"


class InstallMode(enum.Enum):
    """How k3s gets onto the machine (``k3s.install``)."""

    NONE = "none"  # the operator installs k3s at k3s.binary
    AUTO = "auto"  # k3snoded downloads (or copies k3s.airgap_file) when it is missing


class Role(enum.Enum):
    """What a machine is running right now, or has been told to run."""

    NONE = "none"
    SERVER = "server"
    AGENT = "agent"


class ChildState(enum.Enum):
    """Lifecycle of the supervised k3s process."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    STOPPING = "stopping"


class VrrpAuthentication(enum.Enum):
    """How VRRP adverts are authenticated (``registration.vip.authentication``)."""

    HMAC = "hmac"  # keepalived's auth_hmac trailer, keyed from the cluster token (default)
    NONE = "none"  # plain VRRPv3, for a VRID shared with keepalived without auth_hmac


class VrrpState(enum.Enum):
    """RFC 5798 section 6.4 states."""

    INITIALIZE = "initialize"
    BACKUP = "backup"
    MASTER = "master"


@dataclass(frozen=True)
class Peer:
    """A machine discovered on the network (mDNS or seeds). Says nothing about liveness."""

    name: str
    cluster: str
    addresses: tuple[str, ...]
    api_port: int
    role: Role = Role.NONE
    registration: str | None = None
    ca_hash: str | None = None  # the cluster CA hash agents pin, when the peer knows it
    agent_token: bool = False  # the fleet's servers take the derived agent token


@dataclass(frozen=True)
class Member:
    """A machine as the datastore knows it: its heartbeat row."""

    name: str
    address: str
    preference: RolePreference
    eligible: bool
    role: Role
    ready: bool
    heartbeat_age: float
    api_port: int = 0


@dataclass(frozen=True)
class Lease:
    """A named lease in the datastore; ``remaining`` is measured on the database's clock."""

    name: str
    holder: str
    remaining: float


@dataclass(frozen=True)
class ClusterView:
    """What the coordinator observed in one cycle: live members and current leases."""

    members: tuple[Member, ...]
    bootstrap_done: bool = False
    bootstrap_holder: str | None = None


@dataclass(frozen=True)
class Decision:
    """The coordinator's answer: the role of every member, and one sentence saying why."""

    roles: dict[str, Role] = field(default_factory=dict)
    reason: str = ""
    failed: frozenset[str] = frozenset()  # servers demoted because their k3s never got ready
