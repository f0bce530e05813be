"""What k3s needs from k3snoded: its command line, environment, token file and readiness URL.

Pure functions of the Config and a Role, plus the one small file operation of installing the
token. Process mechanics live in ``supervisor.py``.

Secrets stay off the command line, which every user can read through ``ps`` and
``/proc/<pid>/cmdline``:

* the cluster token goes through ``--token-file``, a 0600 copy in ``node.state_dir``, for a
  server; an agent's ``--token-file`` is a secure token pinning the cluster CA
  (``K10<ca-hash>::node:<password>``, ``capin.py``), and a server of a fleet bootstrapped
  with an agent token gets it through ``--agent-token-file``;
* the datastore endpoint (it carries the database password) goes through the child's
  ``K3S_DATASTORE_ENDPOINT`` environment variable, as the k3s docs recommend;
  ``/proc/<pid>/environ`` is readable by the process owner only. It is the one ``K3S_*``
  variable set on purpose; every inherited ``K3S_*`` is scrubbed (``K3S_URL`` would turn a
  server into an etcd joiner).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from k3snoded import capin
from k3snoded.atomic import write_atomic
from k3snoded.capin import Pin
from k3snoded.config import K3S_PORT, Config
from k3snoded.errors import ConfigError, ConfigProblem
from k3snoded.model import Role
from k3snoded.supervisor import ChildSpec, ProbeTls

DEDICATED_TAINT = "k3s-controlplane=true:NoExecute"
DATASTORE_ENV = "K3S_DATASTORE_ENDPOINT"

# k3s chooses the systemd cgroup driver (containerd SystemdCgroup, kubelet cgroupDriver) when
# INVOCATION_ID is non-empty (pkg/agent/containerd/config_linux.go). Under systemd k3s must
# see one, and always the same one: the unit's own changes on every daemon restart, and a
# changed environment would restart an adopted k3s. Not under systemd: none.
INVOCATION_ID = hashlib.sha256(b"k3snoded: k3s runs under systemd").hexdigest()[:32]

# Per-invocation variables of k3snoded's own unit: they must not reach k3s (NOTIFY_SOCKET is
# replaced by the supervisor's private one), and they change on every daemon restart, which
# would change the child's identity and restart an adopted k3s for nothing.
_SCRUBBED = frozenset(
    {
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "MANAGERPID",
        "SYSTEMD_EXEC_PID",
        "MAINPID",
    }
)


def host_for_url(address: str) -> str:
    """An address as the host part of a URL: IPv6 literals in brackets."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]"
    except ValueError:
        pass
    return address


def token_path(cfg: Config) -> Path:
    """Where the 0600 copy of the cluster token lives (``<state_dir>/token``)."""
    return cfg.node.state_dir / "token"


def child_env(base: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: ``base`` without any ``K3S_*`` and without systemd's
    per-invocation variables, but with a constant ``INVOCATION_ID`` when ``base`` has one."""
    env = {
        key: value
        for key, value in base.items()
        if not key.startswith("K3S_") and key not in _SCRUBBED
    }
    if base.get("INVOCATION_ID"):
        env["INVOCATION_ID"] = INVOCATION_ID
    return env


def _pairs(flag: str, values: tuple[str, ...] | list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        out += [flag, value]
    return out


def _node_args(cfg: Config) -> list[str]:
    args = ["--data-dir", str(cfg.k3s.data_dir)]
    if cfg.node.name:
        args += ["--node-name", cfg.node.name]
    if cfg.node.address:
        args += ["--node-ip", cfg.node.address]
    return args


def _labels_and_taints(cfg: Config) -> list[str]:
    return _pairs("--node-label", cfg.node.labels) + _pairs("--node-taint", cfg.node.taints)


def server_argv(
    cfg: Config, *, token_file: Path, registration: str, agent_token_file: Path | None = None
) -> list[str]:
    """``k3s server`` with every flag as its own argv element (never ``'--flag value'``).

    The datastore endpoint is deliberately absent: see ``server_env``.
    """
    argv = [str(cfg.k3s.binary), "server", *_node_args(cfg), "--token-file", str(token_file)]
    if agent_token_file is not None:
        argv += ["--agent-token-file", str(agent_token_file)]
    ds = cfg.datastore
    for flag, path in (
        ("--datastore-cafile", ds.ca_file),
        ("--datastore-certfile", ds.cert_file),
        ("--datastore-keyfile", ds.key_file),
    ):
        if path is not None:
            argv += [flag, str(path)]
    sans: list[str] = []
    for san in (registration, *cfg.registration.tls_san):
        if san and san not in sans:
            sans.append(san)
    argv += _pairs("--tls-san", sans)
    if cfg.servers.dedicated:
        argv += ["--node-taint", DEDICATED_TAINT]
    argv += _labels_and_taints(cfg)
    argv += cfg.k3s.server_args
    return argv


def agent_argv(cfg: Config, *, token_file: Path, registration: str) -> list[str]:
    """``k3s agent`` joining ``https://<registration>:6443``."""
    if not registration:
        raise ConfigError(
            [
                ConfigProblem(
                    str(cfg.source), "registration.address", "an agent needs a registration address"
                )
            ]
        )
    return [
        str(cfg.k3s.binary),
        "agent",
        "--server",
        f"https://{host_for_url(registration)}:{K3S_PORT}",
        "--token-file",
        str(token_file),
        *_node_args(cfg),
        *_labels_and_taints(cfg),
        *cfg.k3s.agent_args,
    ]


def server_env(cfg: Config, base: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: scrubbed, plus the datastore endpoint when one is configured."""
    env = child_env(base)
    if cfg.datastore.endpoint:
        env[DATASTORE_ENV] = cfg.datastore.endpoint
    return env


def _flag_value(args: tuple[str, ...], flag: str) -> str | None:
    """The last value of ``--flag V`` or ``--flag=V`` in args, as urfave/cli would take it."""
    value: str | None = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def server_ready_url(cfg: Config) -> str:
    """``https://127.0.0.1:<https-listen-port>/readyz``, or the bind address when not a wildcard.

    The apiserver's ``/readyz`` (k3s's supervisor port proxies it) includes the datastore
    check; k3s's own ``/ping`` is a static answer that never fails while the process lives.
    """
    port = _flag_value(cfg.k3s.server_args, "--https-listen-port") or str(K3S_PORT)
    host = _flag_value(cfg.k3s.server_args, "--bind-address") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"https://{host_for_url(host)}:{port}/readyz"


def admin_tls(cfg: Config) -> ProbeTls:
    """The admin client certificate k3s writes (CN system:admin, O system:masters) and the
    cluster's server CA, under ``<data-dir>/server/tls``."""
    tls = cfg.k3s.data_dir / "server" / "tls"
    return ProbeTls(tls / "server-ca.crt", tls / "client-admin.crt", tls / "client-admin.key")


def child_spec(
    cfg: Config,
    role: Role,
    registration: str,
    *,
    token_file: Path | None = None,
    base_env: Mapping[str, str] | None = None,
    pin: Pin | None = None,
) -> ChildSpec:
    """The k3s process for ``role``.

    A server is ready after READY=1 once its apiserver answers ``/readyz`` (with the admin
    client certificate; the datastore is part of that check), and the supervisor keeps
    probing it: the VIP and the heartbeat's ``ready`` follow it. An agent's readiness is its
    READY=1 alone: k3s sends it once the apiserver's ``/readyz`` answers through the agent's
    load balancer, which can take the whole of a datastore outage, so an agent is never
    stopped for not being ready (k3s gives up by itself after 15 minutes and exits).

    ``pin``: for a server, whether it takes the agent token; for an agent, the cluster CA hash
    its token file pins (required: an agent is never started without one).
    """
    pin = pin or Pin()
    base = os.environ if base_env is None else base_env
    if role is Role.SERVER:
        agent_token = capin.agent_token_path(cfg) if pin.agent_token else None
        argv = server_argv(
            cfg,
            token_file=token_file or token_path(cfg),
            registration=registration,
            agent_token_file=agent_token,
        )
        return ChildSpec.build(
            argv,
            server_env(cfg, base),
            cwd=Path("/"),
            ready_url=server_ready_url(cfg),
            ready_timeout=cfg.k3s.ready_timeout,
            stop_timeout=cfg.k3s.stop_timeout,
            probe_tls=admin_tls(cfg),
        )
    if role is Role.AGENT:
        if token_file is None:
            if not pin.ca_hash:
                raise ValueError("an agent is never started without the cluster CA hash")
            token_file = capin.join_token_path(cfg, pin.ca_hash)
        argv = agent_argv(cfg, token_file=token_file, registration=registration)
        return ChildSpec.build(
            argv,
            child_env(base),
            cwd=Path("/"),
            ready_timeout=None,
            stop_timeout=cfg.k3s.stop_timeout,
        )
    raise ValueError(f"no k3s process for role {role.value}")


def install_token_file(cfg: Config) -> Path:
    """Copy ``cluster.token_file`` to ``<state_dir>/token`` (0600), atomically, when it changed.

    Blocking file I/O: call it from a thread (``asyncio.to_thread``) inside the daemon.
    """
    target = token_path(cfg)
    content = cfg.cluster.token_file.read_bytes()
    with contextlib.suppress(FileNotFoundError):
        if target.read_bytes() == content and (target.stat().st_mode & 0o077) == 0:
            return target
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(target, content, 0o600)
    return target


AGENT_LB_STATE = ("k3s-agent-load-balancer.json", "k3s-api-server-agent-load-balancer.json")


def clear_agent_state(cfg: Config) -> list[Path]:
    """Before an agent is promoted to server: drop the agent's load-balancer state.

    Those files pin the agent's view of the servers to the registration address; a server's
    embedded agent talks to its own supervisor instead. Certificates, containerd images and the
    node password stay: they belong to the machine, not to the role. Returns what was removed.
    """
    removed = []
    for name in AGENT_LB_STATE:
        path = cfg.k3s.data_dir / "agent" / "etc" / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def node_password(key: bytes, node_name: str) -> str:
    """The node password k3snoded gives ``node_name``: 32 hex, derived from the cluster key.

    Deterministic, so a replacement machine with the same name presents the same password as
    the machine it replaces (k3s stores it per node name and refuses a different one).
    """
    mac = hmac.new(key, b"k3snoded node password\0" + node_name.encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def ensure_node_password(cfg: Config, key: bytes) -> bool:
    """Write ``k3s.node_password_file`` (0600) when it does not exist; never change one.

    Blocking file I/O: call it from a thread. Returns True when it wrote the file.
    """
    path = cfg.k3s.node_password_file
    if path.exists():
        return False
    _make_dirs_0755(path.parent)
    write_atomic(path, (node_password(key, cfg.node.name) + "\n").encode(), 0o600)
    return True


def _make_dirs_0755(directory: Path) -> None:
    """``mkdir -p`` with 0755 for every directory it creates, whatever the umask (k3s creates
    ``/etc/rancher/node`` 0755; the unit's UMask=0077 must not make ``/etc/rancher`` 0700)."""
    missing = []
    for d in (directory, *directory.parents):
        if d.exists():
            break
        missing.append(d)
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        os.chmod(d, 0o755)  # noqa: S103 - k3s's own mode for these directories
