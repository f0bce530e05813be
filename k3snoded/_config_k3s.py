"""Checks of what real k3s refuses or mishandles, so ``check-config`` refuses it first.

Private to ``k3snoded.config`` (called from ``_config_check.check``). Each rule cites the k3s
behaviour it guards against (``../shared/reference/k3s-behaviour.md``, Corrections table):

* a kubeadm-style bootstrap token as the cluster token: servers refuse it
  (``util.NormalizeToken``: "failed to normalize server token ...");
* node labels in the ``kubernetes.io``/``k8s.io`` namespaces outside the kubelet's allowed set:
  the kubelet refuses them and k3s exits (kubelet ``ValidateKubeletFlags``);
* ``--log``/``-l``: k3s forks and its parent sends READY=1 at once, before k3s is up
  (``cmds.forkIfLoggingOrReaping``), and its output leaves the journal;
* a ``k3s.node_password_file`` k3s never reads (it reads ``/etc/rancher/node/password``,
  rootless ``<data-dir>/agent/etc/rancher/node/password``);
* ``--https-listen-port`` other than 6443 while agents join ``https://<registration>:6443``;
* a leftover ``/etc/rancher/k3s/config.yaml`` (+ ``.d/``) from a plain install: k3s reads it
  however it is started and its values become flags, which beat ``K3S_DATASTORE_ENDPOINT``
  (``pkg/configfilearg``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import yaml

from k3snoded.errors import ConfigProblem
from k3snoded.tokens import TokenError, read_token

if TYPE_CHECKING:
    from k3snoded.config import Config

K3S_CONFIG = Path("/etc/rancher/k3s/config.yaml")
NODE_PASSWORD = "/etc/rancher/node/password"  # noqa: S105 - a path, not a password
K3S_PORT = "6443"

_BOOTSTRAP_TOKEN = re.compile(r"^(K10[0-9a-f]*::)?[a-z0-9]{6}\.[a-z0-9]{16}$")
# kubelet kubeletapis.IsKubeletLabel
_KUBELET_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
_KUBELET_LABELS = frozenset(
    {
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "beta.kubernetes.io/os",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "kubernetes.io/arch",
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    }
)


class Sink(Protocol):
    """Where problems go (``_config_check.Checker``)."""

    problems: list[ConfigProblem]

    def add(self, key: str, reason: str) -> None: ...


def check(c: Sink, cfg: Config, *, k3s_config: Path = K3S_CONFIG) -> None:
    _token(c, cfg)
    for index, label in enumerate(cfg.node.labels):
        reason = label_problem(label)
        if reason:
            c.add(f"node.labels[{index}]", reason)
    for key, args in (
        ("k3s.server_args", cfg.k3s.server_args),
        ("k3s.agent_args", cfg.k3s.agent_args),
    ):
        _args(c, cfg, key, args)
    path = str(cfg.k3s.node_password_file)
    if not path.endswith(NODE_PASSWORD):
        c.add(
            "k3s.node_password_file",
            f"k3s reads its node password only from {NODE_PASSWORD} (rootless: "
            f"<data-dir>/agent{NODE_PASSWORD}); k3snoded would write '{path}', which k3s never "
            "reads, so a replacement machine with this name would be refused by the servers",
        )
    _leftover(c, k3s_config)


def _token(c: Sink, cfg: Config) -> None:
    try:
        token = read_token(cfg.cluster.token_file)
    except TokenError:
        return  # reported by the token file check
    if _BOOTSTRAP_TOKEN.match(token):
        c.add(
            "cluster.token_file",
            "holds a kubeadm-style bootstrap token (<6>.<16> characters), which k3s servers "
            'refuse ("failed to normalize server token; must be in format '
            'K10<CA-HASH>::<USERNAME>:<PASSWORD> or <PASSWORD>"); create a token with '
            "`k3snoded token generate`",
        )


def label_problem(label: str) -> str | None:
    """The kubelet's refusal of a ``--node-labels`` key, or None."""
    key = label.partition("=")[0]
    prefix, slash, _name = key.partition("/")
    namespace = prefix if slash else ""
    reserved = namespace in ("kubernetes.io", "k8s.io") or namespace.endswith(
        (".kubernetes.io", ".k8s.io")
    )
    if not reserved or key in _KUBELET_LABELS:
        return None
    if any(namespace == ns or namespace.endswith("." + ns) for ns in _KUBELET_NAMESPACES):
        return None
    return (
        f"'{key}' is in the 'kubernetes.io'/'k8s.io' namespace, which the kubelet refuses in "
        "--node-labels (k3s then exits) unless it starts with kubelet.kubernetes.io/ or "
        "node.kubernetes.io/ or is one of kubernetes.io/hostname, kubernetes.io/arch, "
        "kubernetes.io/os, topology.kubernetes.io/region, topology.kubernetes.io/zone, ...; "
        "role labels such as node-role.kubernetes.io/* must be set through the API"
    )


def _flags(args: tuple[str, ...]) -> Iterator[tuple[int, str, str | None, int]]:
    """(index of the flag, its name, its value, index of the value) for each flag."""
    for i, arg in enumerate(args):
        if not arg.startswith("-") or arg in ("-", "--"):
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if eq:
            yield i, name, value, i
        else:
            nxt = args[i + 1] if i + 1 < len(args) else None
            yield i, name, nxt, i + 1


def _args(c: Sink, cfg: Config, key: str, args: tuple[str, ...]) -> None:
    for i, name, value, at in _flags(args):
        if name in ("log", "l"):
            c.add(
                f"{key}[{i}]",
                f"'{args[i]}' makes k3s fork: its parent sends READY=1 at once, long before k3s "
                "is up, and k3s's output goes to that file instead of k3snoded's journal; "
                "remove it (journalctl -u k3snoded has k3s's log)",
            )
        elif name == "node-label" and value is not None:
            reason = label_problem(value)
            if reason:
                c.add(f"{key}[{at}]", reason)
        elif name == "https-listen-port" and key == "k3s.server_args" and value != K3S_PORT:
            reg = cfg.registration
            if reg.address and not reg.vip.enabled:
                continue  # the operator's load balancer may forward 6443 to this port
            c.add(
                f"{key}[{i}]",
                f"k3s would listen on {value}, but agents and joining servers use "
                f"https://<registration>:{K3S_PORT} (the VIP forwards nothing); remove it, or "
                "set registration.address to a load balancer that forwards 6443 to it with "
                "registration.vip.enabled: false",
            )


def _leftover(c: Sink, config: Path) -> None:
    dropins = config.with_name(config.name + ".d")
    files = [config] if config.is_file() else []
    if dropins.is_dir():
        files += sorted(p for p in dropins.iterdir() if p.suffix in (".yaml", ".yml"))
    for path in files:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            data = None
        keys = sorted(str(k) for k in data) if isinstance(data, dict) else []
        named = f" (it sets {', '.join(keys)})" if keys else ""
        c.problems.append(
            ConfigProblem(
                str(path),
                "",
                f"left over from a plain k3s install{named}: k3s reads it however it is "
                "started and turns its values into command-line flags, which beat what "
                "k3snoded passes (a datastore-endpoint here wins over K3S_DATASTORE_ENDPOINT); "
                "move what you need to k3s.server_args / k3s.agent_args and remove or rename "
                "the file (docs/operations.md, moving from a plain k3s install)",
            )
        )
