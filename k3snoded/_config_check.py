"""Checks of values in context: ranges, files on disk, and the rules that tie keys together.

Private to ``k3snoded.config``. ``check(cfg, ...)`` runs on a typed ``Config`` whose detected
defaults are already filled in and returns every problem, each naming the file that set the key.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from k3snoded import _config_capin, _config_k3s
from k3snoded import _config_rules as rules
from k3snoded._config_yaml import Sources
from k3snoded.errors import ConfigProblem
from k3snoded.model import RolePreference
from k3snoded.rundir import shared_reason
from k3snoded.tokens import TokenError, normalize, read_token
from k3snoded.versions import parse_release

if TYPE_CHECKING:
    from k3snoded.config import Config

ADVERT_MIN, ADVERT_MAX = 0.01, 40.95  # VRRPv3: a 12-bit count of centiseconds


class Checker:
    def __init__(self, sources: Sources, main: str, explicit: Callable[[str], bool]) -> None:
        self.sources = sources
        self.main = main
        self.explicit = explicit
        self.problems: list[ConfigProblem] = []

    def raw(self, key: str) -> object:
        """The value a file set for ``key`` (None when unset)."""
        value: object = self.sources.tree
        for part in key.split("."):
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    def add(self, key: str, reason: str) -> None:
        self.problems.append(ConfigProblem(self.sources.file_of(key, self.main), key, reason))

    def each(self, key: str, items: Iterable[str], check: Callable[[str], str | None]) -> None:
        for index, item in enumerate(items):
            reason = check(item)
            if reason:
                self.add(f"{key}[{index}]", reason)

    def between(self, key: str, value: float, low: float, high: float) -> bool:
        if not low <= value <= high:
            self.add(key, f"must be from {low:g} to {high:g}, not {value:g}")
            return False
        return True

    def positive(self, key: str, value: float) -> bool:
        if value <= 0:
            self.add(key, f"must be greater than 0, not {value:g}")
            return False
        return True


def check(
    cfg: Config, sources: Sources, main: str, explicit: Callable[[str], bool]
) -> list[ConfigProblem]:
    c = Checker(sources, main, explicit)
    _cluster(c, cfg)
    _node(c, cfg)
    _k3s(c, cfg)
    _datastore(c, cfg)
    _coordination(c, cfg)
    _servers(c, cfg)
    _registration(c, cfg)
    _config_k3s.check(c, cfg)  # what real k3s refuses or mishandles
    _contradictions(c, cfg)
    _upgrade(c, cfg)
    c.each("discovery.seeds", cfg.discovery.seeds, rules.check_seed)
    if cfg.api.listen:
        reason = rules.check_listen(cfg.api.listen)
        if reason:
            c.add("api.listen", f'{reason} (or "" to disable the peer API)')
    return c.problems


def _upgrade(c: Checker, cfg: Config) -> None:
    up = cfg.upgrade
    if up.agent_batch < 1:
        c.add("upgrade.agent_batch", f"must be at least 1, not {up.agent_batch}")
    for key, value in (("drain_timeout", up.drain_timeout), ("stable_for", up.stable_for)):
        if value < 0:
            c.add(f"upgrade.{key}", f"must be 0 or more seconds, not {value:g}")


def _cluster(c: Checker, cfg: Config) -> None:
    reason = rules.check_cluster_name(cfg.cluster.name)
    if reason:
        c.add("cluster.name", reason)
    if cfg.cluster.agent_token_file is None:
        reason = check_token_file(cfg.cluster.token_file)
        if reason:
            c.add("cluster.token_file", reason)
    _config_capin.check(c, cfg, check_token_file)


def check_token_file(path: Path) -> str | None:
    """A token file must be a regular, non-empty file that only its owner can read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (
            f"the token file {path} does not exist; create it with "
            f"`k3snoded token generate --output {path}` (the same token on every machine)"
        )
    except OSError as exc:
        return f"cannot access the token file {path}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"the token file {path} is not a regular file"
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        return (
            f"the token file {path} is readable by group or others (mode {mode:04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        normalize(read_token(path))
    except TokenError as exc:
        return str(exc)
    return None


UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL


def _node(c: Checker, cfg: Config) -> None:
    node = cfg.node
    if not node.name:
        c.add("node.name", "the host name could not be detected; set node.name")
    else:
        reason = rules.check_node_name(node.name)
        if reason and not c.explicit("node.name"):
            reason += " (it defaults to the host name, lower-cased: set node.name)"
        if reason:
            c.add("node.name", reason)
    if node.address and not rules.is_ip(node.address):
        c.add("node.address", f"'{node.address}' is not an IP address")
    elif not node.address and _multi_machine(cfg):
        where = f"interface '{node.interface}'" if node.interface else "any network interface"
        c.add("node.address", f"no IPv4 address was detected on {where}; set node.address")
    for key, value in (
        ("node.interface", node.interface),
        ("registration.vip.interface", cfg.registration.vip.interface),
    ):
        reason = rules.check_interface(value) if value else None
        if reason:
            c.add(key, reason)
    c.each("node.labels", node.labels, rules.check_label)
    c.each("node.taints", node.taints, rules.check_taint)
    longest = len(os.fsencode(node.run_dir / "k3snoded.sock")) + 4  # the k3s notify socket
    if longest > UNIX_PATH_MAX:
        c.add(
            "node.run_dir",
            f"too long for unix sockets: {node.run_dir} leaves no room for the sockets inside "
            f"it (at most {UNIX_PATH_MAX - 18} bytes)",
        )
    if reason := shared_reason(node.run_dir):  # rundir.py: never chmod a shared directory
        c.add("node.run_dir", reason)
    discovery = cfg.discovery.mdns or bool(cfg.discovery.seeds)
    if node.role is RolePreference.AGENT and not cfg.registration.address and not discovery:
        c.add(
            "node.role",
            "an agent joins https://<registration.address>:6443, but registration.address is "
            "not set and discovery is off (discovery.mdns false, no seeds) so it cannot be "
            "learned from peers either",
        )


def _multi_machine(cfg: Config) -> bool:
    return (
        not cfg.datastore.is_sqlite
        or bool(cfg.registration.address)
        or cfg.node.role is RolePreference.AGENT
    )


def _k3s(c: Checker, cfg: Config) -> None:
    k = cfg.k3s
    if not k.mirror.startswith(("https://", "http://")):
        c.add("k3s.mirror", f"'{k.mirror}' is not an http(s):// URL")
    if parse_release(k.version) is None:
        c.add("k3s.version", f"'{k.version}' is not a k3s release name such as v1.31.4+k3s1")
    for key, path in (
        ("k3s.airgap_file", k.airgap_file),
        ("k3s.airgap_sha256_file", k.airgap_sha256_file),
    ):
        if path is not None and not path.is_file():
            c.add(key, f"{path} is not a file")
    c.each("k3s.server_args", cfg.k3s.server_args, rules.check_k3s_arg)
    c.each("k3s.agent_args", cfg.k3s.agent_args, rules.check_k3s_arg)
    c.positive("k3s.ready_timeout", cfg.k3s.ready_timeout)
    c.positive("k3s.stop_timeout", cfg.k3s.stop_timeout)
    c.positive("k3s.restart_backoff_max", cfg.k3s.restart_backoff_max)


def _datastore(c: Checker, cfg: Config) -> None:
    ds = cfg.datastore
    reason = rules.check_endpoint(ds.endpoint)
    if reason:
        c.add("datastore.endpoint", reason)
    if (ds.cert_file is None) != (ds.key_file is None):
        have, missing = (
            ("cert_file", "key_file") if ds.key_file is None else ("key_file", "cert_file")
        )
        c.add(f"datastore.{have}", f"is set but datastore.{missing} is not; they go together")
    for name in ("ca_file", "cert_file", "key_file"):
        path: Path | None = getattr(ds, name)
        if path is None:
            continue
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except FileNotFoundError:
            c.add(f"datastore.{name}", f"{path} does not exist")
            continue
        except OSError as exc:
            c.add(f"datastore.{name}", f"cannot access {path}: {exc.strerror}")
            continue
        if not regular:
            c.add(f"datastore.{name}", f"{path} is not a regular file")


def _coordination(c: Checker, cfg: Config) -> None:
    co = cfg.coordination
    ok = all(
        [
            c.positive("coordination.renew_interval", co.renew_interval),
            c.positive("coordination.retry_timeout", co.retry_timeout),
            c.positive("coordination.lease_ttl", co.lease_ttl),
            c.positive("coordination.dead_after", co.dead_after),
        ]
    )
    if not ok:
        return
    if co.renew_interval + 2 * co.retry_timeout > co.lease_ttl:
        c.add(
            "coordination.lease_ttl",
            f"must be at least renew_interval + 2 * retry_timeout "
            f"({co.renew_interval:g} + 2 * {co.retry_timeout:g} = "
            f"{co.renew_interval + 2 * co.retry_timeout:g}), not {co.lease_ttl:g}, "
            "or a holder can lose its lease while retrying",
        )
    if co.dead_after < co.lease_ttl:
        c.add(
            "coordination.dead_after",
            f"must be at least lease_ttl ({co.lease_ttl:g}), not {co.dead_after:g}, "
            "or live members are declared dead between two renewals",
        )


def _servers(c: Checker, cfg: Config) -> None:
    count = cfg.servers.count
    if count < 1:
        c.add("servers.count", f"must be at least 1, not {count}")
        return
    if count == 1 or not cfg.datastore.is_sqlite:
        return
    why = "SQLite cannot coordinate machines: set datastore.endpoint to a shared MySQL/PostgreSQL"
    if cfg.datastore.endpoint:
        c.add("datastore.endpoint", f"servers.count is {count}, but {why}")
    elif cfg.node.role is RolePreference.SERVER:
        c.add(
            "node.role",
            f"role server needs the shared datastore (servers.count is {count}); "
            f"{why}, or make this node an agent",
        )
    elif cfg.node.role is RolePreference.AUTO and not cfg.registration.address:
        c.add(
            "servers.count",
            f"is {count}, but without datastore.endpoint and registration.address this node "
            f"would run a lone server on SQLite; {why}, or set node.role: agent on machines "
            "that only join",
        )


def _contradictions(c: Checker, cfg: Config) -> None:
    """Parts that contradict each other: refused, never silently reinterpreted. What a machine
    without a shared datastore runs is ``roles.static_role``: an agent when it has a
    registration address and no endpoint, else a single server on SQLite, which never holds a
    VIP (only fleet servers run the VRRP speaker)."""
    reg, role = cfg.registration, cfg.node.role
    shared = bool(cfg.datastore.endpoint) and not cfg.datastore.is_sqlite
    vip_set = c.raw("registration.vip.enabled")
    if not reg.address and vip_set is True and role is not RolePreference.AGENT:
        c.add(
            "registration.vip.enabled",
            "is true, but registration.address is empty: there is no address to hold; set "
            "registration.address to the VIP, or remove registration.vip.enabled",
        )
    if shared or not reg.address:
        return
    if role is RolePreference.SERVER and cfg.datastore.endpoint == "":
        c.add(
            "node.role",
            f"is server, but without a shared datastore (datastore.endpoint) a machine with a "
            f"registration address ({reg.address}) joins it as an agent; set datastore.endpoint "
            "to the fleet's MySQL/PostgreSQL, or remove node.role: server",
        )
    elif role is not RolePreference.AGENT and cfg.datastore.endpoint and reg.vip.enabled:
        c.add(
            "registration.vip.enabled",
            f"is true, but this machine runs a single server on SQLite "
            f"({cfg.datastore.endpoint}) and never holds the VIP {reg.address} (only servers "
            "of a fleet with a shared datastore run VRRP); set registration.vip.enabled: false "
            "if your own load balancer or DNS name serves that address",
        )


def _registration(c: Checker, cfg: Config) -> None:
    reg = cfg.registration
    vip = reg.vip
    if reg.address:
        reason = rules.check_host(reg.address)
        if reason:
            c.add("registration.address", reason)
        elif vip.enabled and not rules.is_ipv4(reg.address):
            c.add(
                "registration.address",
                f"'{reg.address}' is not an IPv4 address, but registration.vip.enabled is true "
                "and a VIP must be an IPv4 address; set registration.vip.enabled: false when "
                "your own load balancer or DNS name serves this address",
            )
        elif vip.enabled and reg.address == cfg.node.address:
            c.add(
                "registration.address",
                f"the VIP {reg.address} is this node's own "
                "address (node.address); a VIP must be an otherwise unused address",
            )
    if vip.enabled and not vip.interface:
        c.add("registration.vip.interface", "no network interface was detected; set it")
    c.each("registration.tls_san", reg.tls_san, rules.check_san)
    c.between("registration.vip.prefix", vip.prefix, 1, 32)
    c.between("registration.vip.vrid", vip.vrid, 1, 255)
    c.between("registration.vip.priority", vip.priority, 1, 254)
    interval = vip.advert_interval
    in_range = c.between("registration.vip.advert_interval", interval, ADVERT_MIN, ADVERT_MAX)
    if in_range and abs(interval * 100 - round(interval * 100)) > 1e-6:
        c.add(
            "registration.vip.advert_interval",
            f"must be a multiple of 0.01 s (VRRPv3 counts centiseconds), not {interval:g}",
        )
    c.each(
        "registration.vip.unicast_peers",
        vip.unicast_peers,
        lambda p: None if rules.is_ipv4(p) else f"'{p}' is not an IPv4 address",
    )
