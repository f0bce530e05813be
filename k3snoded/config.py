"""The configuration: declared once, with defaults beside the fields.

``load_config(path)`` reads ``config.yaml`` plus ``config.d/*.yaml`` drop-ins (lexical order,
deep merge), validates everything and either returns a ``Config`` or raises ``ConfigError``
carrying every problem by file and dotted key. ``check-config`` and the daemon call the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from k3snoded.model import RolePreference

DEFAULT_CONFIG = Path("/etc/k3snoded/config.yaml")
DEFAULT_API_PORT = 6480
K3S_PORT = 6443


@dataclass(frozen=True)
class ClusterConfig:
    name: str = "default"
    token_file: Path = Path("/etc/k3snoded/token")


@dataclass(frozen=True)
class NodeConfig:
    name: str = ""  # default: the host name, lower-cased
    role: RolePreference = RolePreference.AUTO
    address: str = ""  # default: the first IPv4 address of `interface`
    interface: str = ""  # default: the interface of the default route, else the first non-loopback
    state_dir: Path = Path("/var/lib/k3snoded")
    run_dir: Path = Path("/run/k3snoded")
    labels: tuple[str, ...] = ()
    taints: tuple[str, ...] = ()


@dataclass(frozen=True)
class K3sConfig:
    binary: Path = Path("/usr/local/bin/k3s")
    data_dir: Path = Path("/var/lib/rancher/k3s")
    server_args: tuple[str, ...] = ()
    agent_args: tuple[str, ...] = ()
    ready_timeout: float = 300.0  # seconds from exec to READY=1 before the start counts as failed
    stop_timeout: float = 30.0  # SIGTERM, then SIGKILL after this many seconds
    restart_backoff_max: float = 60.0


@dataclass(frozen=True)
class DatastoreConfig:
    endpoint: str = ""  # k3s's own format; empty or "sqlite://..." is the embedded SQLite
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.endpoint == "" or self.endpoint.startswith(("sqlite:", "sqlite"))


@dataclass(frozen=True)
class CoordinationConfig:
    """Timings of heartbeats and leases in the datastore (seconds)."""

    renew_interval: float = 2.0
    retry_timeout: float = 2.0
    lease_ttl: float = 10.0  # rule: renew_interval + 2 * retry_timeout <= lease_ttl
    dead_after: float = 10.0  # a member whose heartbeat is older than this is dead


@dataclass(frozen=True)
class ServersConfig:
    count: int = 2
    dedicated: bool = False


@dataclass(frozen=True)
class VipConfig:
    enabled: bool = True
    interface: str = ""  # default: node.interface
    prefix: int = 24
    vrid: int = 51
    advert_interval: float = 0.1  # VRRPv3: 0.01 .. 40.95 s, in centiseconds
    priority: int = 100  # 1..254
    preempt: bool = False
    unicast_peers: tuple[str, ...] = ()  # empty: multicast to 224.0.0.18


@dataclass(frozen=True)
class RegistrationConfig:
    address: str = ""  # the fixed registration address (VIP, or the operator's LB / DNS name)
    tls_san: tuple[str, ...] = ()
    vip: VipConfig = field(default_factory=VipConfig)


@dataclass(frozen=True)
class DiscoveryConfig:
    mdns: bool = True
    seeds: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApiConfig:
    listen: str = f"0.0.0.0:{DEFAULT_API_PORT}"  # peer API (signed requests); "" disables it


@dataclass(frozen=True)
class Config:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    k3s: K3sConfig = field(default_factory=K3sConfig)
    datastore: DatastoreConfig = field(default_factory=DatastoreConfig)
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)
    servers: ServersConfig = field(default_factory=ServersConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    source: Path = DEFAULT_CONFIG  # the main file it was loaded from

    @property
    def socket_path(self) -> Path:
        """The local control socket (root only, mode 0600)."""
        return self.node.run_dir / "k3snoded.sock"


def load_config(path: Path = DEFAULT_CONFIG) -> Config:
    """Load and validate; raise ConfigError naming every problem by file and dotted key."""
    raise NotImplementedError  # implemented by the config work
