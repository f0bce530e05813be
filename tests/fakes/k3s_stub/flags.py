"""urfave/cli-style flag definitions and parsing for ``k3s server`` and ``k3s agent``.

Parsing follows Go's ``flag`` package as urfave/cli uses it: ``-f v``, ``--f v``, ``--f=v``,
bools take no separate value (``--f=false`` only), parsing stops at the first non-flag or ``--``,
slices repeat, and an undefined flag is ``flag provided but not defined: -<name>``.
Values come from the command line first, then the flag's environment variable, then the default.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class Kind(enum.Enum):
    STRING = "string"
    BOOL = "bool"
    INT = "int"
    SLICE = "slice"


@dataclass(frozen=True)
class Flag:
    name: str
    kind: Kind = Kind.STRING
    aliases: tuple[str, ...] = ()
    env: str = ""
    default: str = ""
    split: bool = False  # comma-split slice items (util.SplitStringSlice)


class UsageError(Exception):
    """Incorrect usage: printed as ``Incorrect Usage: <msg>`` and fatal, exit 1."""


def _s(name: str, *aliases: str, env: str = "", default: str = "") -> Flag:
    return Flag(name, Kind.STRING, aliases, env, default)


def _b(name: str, *aliases: str, env: str = "", default: str = "false") -> Flag:
    return Flag(name, Kind.BOOL, aliases, env, default)


def _i(name: str, env: str = "", default: str = "0") -> Flag:
    return Flag(name, Kind.INT, (), env, default)


def _l(name: str, *aliases: str, env: str = "", split: bool = False) -> Flag:
    return Flag(name, Kind.SLICE, aliases, env, "", split)


# Flags shared by server and agent (servers also run an agent).
_COMMON: tuple[Flag, ...] = (
    _s("config", "c", env="K3S_CONFIG_FILE", default="/etc/rancher/k3s/config.yaml"),
    _b("debug", env="K3S_DEBUG"),
    _i("v"),
    _s("vmodule"),
    _s("log", "l"),
    _b("alsologtostderr"),
    _s("token", "t", env="K3S_TOKEN"),
    _s("token-file", env="K3S_TOKEN_FILE"),
    _s("server", "s", env="K3S_URL"),
    _s("data-dir", "d", env="K3S_DATA_DIR", default="/var/lib/rancher/k3s"),
    _s("node-name", env="K3S_NODE_NAME"),
    _b("with-node-id"),
    _l("node-label"),
    _l("node-taint"),
    _l("node-ip", "i", split=True),
    _l("node-external-ip", split=True),
    _l("node-internal-dns", split=True),
    _l("node-external-dns", split=True),
    _s("bind-address"),
    _s("flannel-iface"),
    _s("flannel-conf"),
    _s("flannel-cni-conf"),
    _l("kubelet-arg"),
    _l("kube-proxy-arg"),
    _i("lb-server-port", env="K3S_LB_SERVER_PORT", default="6444"),
    _s("resolv-conf", env="K3S_RESOLV_CONF"),
    _b("selinux", env="K3S_SELINUX"),
    _b("rootless"),
    _b("prefer-bundled-bin"),
    _b("protect-kernel-defaults"),
    _s("private-registry", default="/etc/rancher/k3s/registries.yaml"),
    _s("image-service-endpoint"),
    _s("container-runtime-endpoint"),
    _s("default-runtime"),
    _s("snapshotter", default="overlayfs"),
    _s("pause-image"),
    _s("airgap-extra-registry"),
    _b("docker"),
    _s("vpn-auth", env="K3S_VPN_AUTH"),
    _s("vpn-auth-file", env="K3S_VPN_AUTH_FILE"),
    _b("disable-default-registry-endpoint"),
    _b("node-name-from-hostname"),
)

_SERVER_ONLY: tuple[Flag, ...] = (
    _s("agent-token", env="K3S_AGENT_TOKEN"),
    _s("agent-token-file", env="K3S_AGENT_TOKEN_FILE"),
    _s("datastore-endpoint", env="K3S_DATASTORE_ENDPOINT"),
    _s("datastore-cafile", env="K3S_DATASTORE_CAFILE"),
    _s("datastore-certfile", env="K3S_DATASTORE_CERTFILE"),
    _s("datastore-keyfile", env="K3S_DATASTORE_KEYFILE"),
    _l("tls-san", split=True),
    _b("tls-san-security", default="true"),
    _b("cluster-init", env="K3S_CLUSTER_INIT"),
    _b("cluster-reset", env="K3S_CLUSTER_RESET"),
    _s("cluster-reset-restore-path"),
    _l("disable", split=True),
    _s("write-kubeconfig", "o", env="K3S_KUBECONFIG_OUTPUT"),
    _s("write-kubeconfig-mode", env="K3S_KUBECONFIG_MODE"),
    _s("write-kubeconfig-group", env="K3S_KUBECONFIG_GROUP"),
    _s("advertise-address"),
    _i("advertise-port"),
    _i("https-listen-port", default="6443"),
    _i("supervisor-port"),
    _s("apiserver-bind-address"),
    _i("apiserver-port"),
    _s("flannel-backend", default="vxlan"),
    _b("flannel-ipv6-masq"),
    _b("flannel-external-ip"),
    _s("egress-selector-mode", default="agent"),
    _l("cluster-cidr", split=True),
    _l("service-cidr", split=True),
    _l("cluster-dns", split=True),
    _s("cluster-domain", default="cluster.local"),
    _s("service-node-port-range", default="30000-32767"),
    _b("disable-agent"),
    _b("disable-etcd"),
    _b("disable-apiserver"),
    _b("disable-scheduler"),
    _b("disable-controller-manager"),
    _b("disable-cloud-controller"),
    _b("disable-kube-proxy"),
    _b("disable-network-policy"),
    _b("disable-helm-controller"),
    _b("secrets-encryption"),
    _s("secrets-encryption-provider"),
    _b("embedded-registry"),
    _b("supervisor-metrics"),
    _s("system-default-registry"),
    _s("default-local-storage-path"),
    _s("kine-tls"),
    _l("kube-apiserver-arg"),
    _l("kube-scheduler-arg"),
    _l("kube-controller-manager-arg"),
    _l("kube-cloud-controller-manager-arg"),
    _l("etcd-arg"),
    _b("etcd-expose-metrics"),
    _b("etcd-disable-snapshots"),
    _s("etcd-snapshot-name"),
    _s("etcd-snapshot-schedule-cron"),
    _i("etcd-snapshot-retention"),
    _s("etcd-snapshot-dir"),
    _s("helm-job-image"),
    _b("enable-pprof"),
    _s("token-ttl"),
)

_AGENT_ONLY: tuple[Flag, ...] = (_b("disable-apiserver-lb"),)

SERVER_FLAGS: tuple[Flag, ...] = _COMMON + _SERVER_ONLY
AGENT_FLAGS: tuple[Flag, ...] = _COMMON + _AGENT_ONLY


def index(flags: Sequence[Flag]) -> dict[str, Flag]:
    """Every name and alias → its flag."""
    out: dict[str, Flag] = {}
    for f in flags:
        out[f.name] = f
        for a in f.aliases:
            out[a] = f
    return out


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_bool(text: str) -> bool | None:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


@dataclass
class Args:
    """Parsed flag values: command line, then environment, then defaults."""

    flags: dict[str, Flag]
    given: dict[str, list[str]] = field(default_factory=dict)  # canonical name → raw values
    env: Mapping[str, str] = field(default_factory=dict)
    positional: list[str] = field(default_factory=list)

    def _raw(self, name: str) -> list[str] | None:
        f = self.flags[name]
        if name in self.given:
            return self.given[name]
        if f.env and self.env.get(f.env, "") != "":
            return [self.env[f.env]]
        return None

    def is_set(self, name: str) -> bool:
        return self._raw(name) is not None

    def get_str(self, name: str) -> str:
        raw = self._raw(name)
        return raw[-1] if raw else self.flags[name].default

    def get_bool(self, name: str) -> bool:
        raw = self._raw(name)
        text = raw[-1] if raw else self.flags[name].default
        return parse_bool(text) is True

    def get_int(self, name: str) -> int:
        raw = self._raw(name)
        return int(raw[-1]) if raw else int(self.flags[name].default)

    def get_list(self, name: str) -> list[str]:
        raw = self._raw(name) or []
        if not self.flags[name].split:
            return list(raw)
        return [part.strip() for item in raw for part in item.split(",") if part.strip()]


def parse(argv: Sequence[str], flags: Sequence[Flag], env: Mapping[str, str]) -> Args:
    """Parse ``argv`` (the arguments after the subcommand) like Go's flag.FlagSet."""
    table = index(flags)
    args = Args(flags={f.name: f for f in flags}, env=env)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if len(arg) < 2 or not arg.startswith("-"):
            args.positional = list(argv[i - 1 :])
            break
        dashes = 2 if arg.startswith("--") else 1
        name = arg[dashes:]
        if dashes == 2 and name == "":
            args.positional = list(argv[i:])
            break
        if name == "" or name.startswith("-") or name.startswith("="):
            raise UsageError(f"bad flag syntax: {arg}")
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in ("help", "h"):
            raise HelpRequested
        f = table.get(name)
        if f is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if f.kind is Kind.BOOL:
            text = "true" if value is None else value
            if parse_bool(text) is None:
                raise UsageError(f'invalid boolean value "{text}" for -{name}: parse error')
            value = text
        elif value is None:
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        if f.kind is Kind.INT:
            try:
                int(value, 0)
            except ValueError:
                raise UsageError(f'invalid value "{value}" for flag -{name}: parse error') from None
            value = str(int(value, 0))
        if f.kind is Kind.SLICE:
            args.given.setdefault(f.name, []).append(value)
        else:
            args.given[f.name] = [value]
    return args


class HelpRequested(Exception):
    """``--help``/``-h``: print usage and exit 0."""


def usage(command: str, flags: Sequence[Flag]) -> str:
    lines = [
        "NAME:",
        f"   k3s {command} - Run {'management server' if command == 'server' else 'node agent'}",
        "",
        "USAGE:",
        f"   k3s {command} [OPTIONS]",
        "",
        "OPTIONS:",
    ]
    for f in flags:
        names = ", ".join([f"--{f.name}"] + [f"-{a}" for a in f.aliases])
        value = "" if f.kind is Kind.BOOL else " value"
        env = f" [${f.env}]" if f.env else ""
        default = f' (default: "{f.default}")' if f.default and f.kind is Kind.STRING else ""
        lines.append(f"   {names}{value}{default}{env}")
    return "\n".join(lines) + "\n"


def environment() -> dict[str, str]:
    return dict(os.environ)
