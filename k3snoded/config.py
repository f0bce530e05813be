"""The configuration: declared once, with defaults beside the fields.

``load_config(path)`` reads ``config.yaml`` plus ``config.d/*.yaml`` drop-ins (lexical order,
deep merge), validates everything and either returns a ``Config`` or raises ``ConfigError``
carrying every problem by file and dotted key. ``check-config`` and the daemon call the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from k3snoded._config_build import Builder
from k3snoded._config_check import check
from k3snoded._config_host import HostFacts, Interface, detect_host
from k3snoded._config_reload import changed_keys, needs_restart
from k3snoded._config_rules import hide_password
from k3snoded._config_yaml import DROPIN_DIR, Sources, read_sources
from k3snoded.errors import ConfigError, ConfigProblem
from k3snoded.model import InstallMode, RolePreference, VrrpAuthentication

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_CONFIG",
    "DROPIN_DIR",
    "K3S_PORT",
    "ApiConfig",
    "ClusterConfig",
    "Config",
    "CoordinationConfig",
    "DatastoreConfig",
    "DiscoveryConfig",
    "HostFacts",
    "Interface",
    "K3sConfig",
    "NodeConfig",
    "RegistrationConfig",
    "ServersConfig",
    "UpgradeConfig",
    "VipConfig",
    "changed_keys",
    "config_summary",
    "detect_host",
    "load_config",
    "needs_restart",
]

DEFAULT_CONFIG = Path("/etc/k3snoded/config.yaml")
DEFAULT_API_PORT = 6480
K3S_PORT = 6443


@dataclass(frozen=True)
class ClusterConfig:
    name: str = "default"
    token_file: Path = Path("/etc/k3snoded/token")
    # An agent-only machine that holds only the agent token (a server's
    # <data-dir>/server/agent-token): it never reads token_file (docs/security.md).
    agent_token_file: Path | None = None


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
    # k3s's node password (k3s reads it from this fixed path). When absent, k3snoded writes one
    # derived from the cluster token and the node name, so a replacement machine with the same
    # name is accepted by the servers (docs/decisions/0006-node-passwords.md).
    node_password_file: Path = Path("/etc/rancher/node/password")
    # Installing k3s itself when k3s.binary is missing (install: auto), verified by sha256.
    install: InstallMode = InstallMode.NONE
    version: str = "v1.31.4+k3s1"
    mirror: str = "https://github.com/k3s-io/k3s/releases/download"
    airgap_file: Path | None = None
    airgap_sha256_file: Path | None = None


@dataclass(frozen=True)
class DatastoreConfig:
    endpoint: str = ""  # k3s's own format; empty or "sqlite://..." is the embedded SQLite
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __repr__(self) -> str:  # the endpoint may hold a password: never print it
        return (
            f"DatastoreConfig(endpoint={hide_password(self.endpoint)!r}, "
            f"ca_file={self.ca_file!r}, cert_file={self.cert_file!r}, key_file={self.key_file!r})"
        )

    @property
    def is_sqlite(self) -> bool:
        return self.endpoint == "" or self.endpoint.startswith(("sqlite:", "sqlite"))


@dataclass(frozen=True)
class CoordinationConfig:
    """Timings of heartbeats and leases in the datastore (seconds)."""

    renew_interval: float = 3.0  # at rest; 0.5 s while the fleet converges
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
    authentication: VrrpAuthentication = VrrpAuthentication.HMAC  # none: keepalived w/o auth_hmac


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
class UpgradeConfig:
    """Rolling k3s upgrades (a change of ``k3s.version`` with ``k3s.install: auto``)."""

    agent_batch: int = 1  # agents upgraded at once, after every server
    drain: bool = True  # cordon and drain a machine through the Kubernetes API first
    drain_timeout: float = 120.0  # seconds of evictions before the upgrade goes on anyway
    stable_for: float = 30.0  # seconds a new k3s must stay ready before the next machine


@dataclass(frozen=True)
class ApiConfig:
    listen: str = f"0.0.0.0:{DEFAULT_API_PORT}"  # peer API (signed requests); "" disables it

    @property
    def port(self) -> int:
        """The TCP port of ``listen``; 0 when the peer API is disabled."""
        _, _, port = self.listen.rpartition(":")
        return int(port) if port.isdigit() else 0


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
    upgrade: UpgradeConfig = field(default_factory=UpgradeConfig)
    source: Path = DEFAULT_CONFIG  # the main file it was loaded from

    @property
    def socket_path(self) -> Path:
        """The local control socket (root only, mode 0600)."""
        return self.node.run_dir / "k3snoded.sock"


def load_config(path: Path = DEFAULT_CONFIG, *, host: HostFacts | None = None) -> Config:
    """Load and validate; raise ConfigError naming every problem by file and dotted key.

    Reads ``path`` (required) and then ``config.d/*.yaml``/``*.yml`` beside it in lexical
    order; mappings merge key by key, lists and scalars replace, an empty value unsets.
    Defaults that depend on the machine (node name, interface, address, VIP interface) come
    from ``host``, or from ``detect_host()`` when needed and not given. Never raises anything
    but ``ConfigError`` for what the files or the machine contain.

    Two defaults depend on other keys: ``servers.count`` is 1 when it is not set and the
    datastore is SQLite (the embedded single server), and ``registration.vip.enabled`` is
    false when ``registration.address`` is empty (no address, no VIP). A bare ``sqlite``
    endpoint is returned as ``""`` (k3s's SQLite default; kine itself rejects ``sqlite``).
    """
    path = Path(path)
    sources = read_sources(path)
    builder = Builder(sources, str(path))
    cfg: Config = builder.build(Config, sources.tree)
    problems = sources.problems + builder.problems
    if not sources.problems:  # context checks only make sense once every file was read
        cfg = _fill_defaults(cfg, sources, host)
        reported = {p.key for p in problems}
        for problem in check(cfg, sources, str(path), lambda key: _is_set(sources, key)):
            if not _under_any(problem.key, reported):
                problems.append(problem)
    if problems:
        raise ConfigError(_in_reading_order(problems, sources))
    if cfg.datastore.endpoint == "sqlite":  # kine needs "://"; empty is its SQLite default
        cfg = replace(cfg, datastore=replace(cfg.datastore, endpoint=""))
    return replace(cfg, source=path)


def _fill_defaults(cfg: Config, sources: Sources, host: HostFacts | None) -> Config:
    node, reg = cfg.node, cfg.registration
    needs_host = not node.name or not node.interface or not node.address
    facts = (host or detect_host()) if needs_host else HostFacts()
    name = node.name or facts.hostname.lower()
    interface = node.interface or facts.default_interface()
    address = node.address or (facts.address_of(interface) if interface else "")
    node = replace(node, name=name, interface=interface, address=address)
    vip = replace(
        reg.vip,
        interface=reg.vip.interface or interface,
        enabled=reg.vip.enabled and bool(reg.address),
    )
    servers = cfg.servers
    if not _is_set(sources, "servers.count") and cfg.datastore.is_sqlite:
        servers = replace(servers, count=1)
    discovery = cfg.discovery
    if cfg.cluster.agent_token_file is not None:
        # Without the cluster token nothing a peer signs can be verified (docs/security.md),
        # and the machine is never a server: no discovery and no VIP, whatever the fleet's
        # common config says.
        vip = replace(vip, enabled=False)
        discovery = replace(discovery, mdns=False, seeds=())
    return replace(
        cfg,
        node=node,
        servers=servers,
        registration=replace(reg, vip=vip),
        discovery=discovery,
    )


def _in_reading_order(problems: list[ConfigProblem], sources: Sources) -> list[ConfigProblem]:
    """Problems grouped by file (main file first) and, within a file, by section."""
    files = {str(f): i for i, f in enumerate(sources.files)}
    sections = {name: i for i, name in enumerate(Config.__dataclass_fields__)}

    def order(p: ConfigProblem) -> tuple[int, int]:
        section = p.key.split(".", 1)[0].split("[", 1)[0]
        return files.get(p.file, -1), sections.get(section, -1 if not p.key else len(sections))

    return sorted(problems, key=order)


def _is_set(sources: Sources, key: str) -> bool:
    value: Any = sources.tree
    for part in key.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return False
        value = value[part]
    return True


def _under_any(key: str, keys: set[str]) -> bool:
    return any(key == k or key.startswith((k + ".", k + "[")) for k in keys if k)


def config_summary(cfg: Config) -> str:
    """One line for logs and ``STATUS=``; never contains secrets (no endpoint credentials)."""
    datastore = "sqlite" if cfg.datastore.is_sqlite else cfg.datastore.endpoint.split("://")[0]
    if cfg.registration.address:
        kind = "vip" if cfg.registration.vip.enabled else "external"
        registration = f"{cfg.registration.address} ({kind})"
    else:
        registration = "none"
    return (
        f"cluster {cfg.cluster.name}, node {cfg.node.name} ({cfg.node.role.value}, "
        f"{cfg.node.address or 'no address'}), {cfg.servers.count} server(s)"
        f"{' dedicated' if cfg.servers.dedicated else ''}, datastore {datastore}, "
        f"registration {registration}"
    )
