"""Node identity: name, IPs, the node password file, the admin kubeconfig."""

from __future__ import annotations

import base64
import contextlib
import grp
import os
import secrets
import socket
from pathlib import Path

from tests.fakes.k3s_stub import logs
from tests.fakes.k3s_stub.configfile import rooted


def node_name(given: str, with_id: bool) -> str:
    name = given or socket.gethostname().lower()
    if not with_id:
        return name
    id_file = Path(rooted("/etc/rancher/node/id"))
    try:
        node_id = id_file.read_text().strip()
    except OSError:
        node_id = secrets.token_hex(4)
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(node_id + "\n")
    return f"{name}-{node_id}"


def detect_ip() -> str:
    """The host IP a default route would use (no packet is sent), else loopback."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("10.255.255.255", 1))
        ip = str(sock.getsockname()[0])
        if ip and ip != "0.0.0.0":
            return ip
    return "127.0.0.1"


def node_password() -> str:
    """``/etc/rancher/node/password`` (32 hex, 0600), created on first use."""
    path = Path(rooted("/etc/rancher/node/password"))
    with contextlib.suppress(OSError):
        existing = path.read_text().strip()
        if existing:
            return existing
    pw = secrets.token_hex(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(pw + "\n")
    return pw


REJECTED = (
    "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' "
    "may not match server node-passwd entry, try enabling a unique node name with the "
    "--with-node-id flag"
)


def write_kubeconfig(
    path: str, mode: str, group: str, ca_pem: bytes, host: str, port: int, password: str
) -> None:
    ca = base64.b64encode(ca_pem).decode()
    text = f"""apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: https://{f"[{host}]" if ":" in host else host}:{port}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {{}}
users:
- name: default
  user:
    username: server
    password: {password}
"""
    try:
        perm = int(mode, 8) if mode else 0o600
    except ValueError:
        logs.warning(f"Failed to parse kubeconfig mode {mode}, using 0600")
        perm = 0o600
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, perm)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(target, perm)
    if group:
        try:
            os.chown(target, -1, grp.getgrnam(group).gr_gid)
        except (KeyError, OSError) as exc:
            logs.error(f"Failed to set {target} to group {group}: {exc}")
    logs.info(f"Wrote kubeconfig {target}")
    logs.info("Run: k3s kubectl")
