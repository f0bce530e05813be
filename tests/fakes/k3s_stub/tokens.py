"""Tokens (pkg/clientaccess/token.go) and the server's token files and cred/passwd."""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fakes.k3s_stub import logs
from tests.fakes.k3s_stub.tls import ca_hash

_BOOTSTRAP_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


class TokenError(Exception):
    """A token that cannot be parsed."""


@dataclass(frozen=True)
class Token:
    ca_hash: str  # "" for a short token
    username: str
    password: str  # or the whole <id>.<secret> of a bootstrap token
    bootstrap: bool = False


def parse(text: str) -> Token:
    """clientaccess.parseToken: ``K10<hash>::<user>:<pw>``, ``K10<hash>::<id>.<secret>``, or a
    short ``<pw>`` / ``<id>.<secret>`` (read as ``K10:::<pw>`` / ``K10::<id>.<secret>``)."""
    if text == "":
        raise TokenError("token must not be empty")
    if not text.startswith("K10"):
        text = ("K10::" if _BOOTSTRAP_TOKEN.match(text) else "K10:::") + text
    parts = text[3:].split("::", 1)
    hash_part, creds = ("", parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    if hash_part and len(hash_part) != 64:
        raise TokenError("invalid token CA hash length")
    if _BOOTSTRAP_TOKEN.match(creds):
        return Token(hash_part, "", creds, bootstrap=True)
    user_pw = creds.split(":", 1)
    if len(user_pw) != 2 or not user_pw[1]:
        raise TokenError("invalid token format")
    return Token(hash_part, user_pw[0], user_pw[1])


FILE_WAIT = 240.0  # util.ReadFile waits up to 4 minutes for a missing file
FILE_POLL = 2.0


def read_token_file(path: str) -> str:
    """util.ReadFile: the content, surrounding whitespace trimmed. A file that does not exist
    yet is waited for (every 2 s, ``Waiting for <path> to be available``) for up to 4 minutes,
    then ``Timeout while trying to read the file``. Blocking."""
    start = time.monotonic()
    while time.monotonic() - start < FILE_WAIT:
        try:
            return Path(path).read_text().strip()
        except FileNotFoundError:
            logs.info(f"Waiting for {path} to be available")
            time.sleep(FILE_POLL)
    raise OSError("Timeout while trying to read the file")


def is_bootstrap_token(text: str) -> bool:
    """A kubeadm-style ``abcdef.0123456789abcdef`` (bare or after ``K10<hash>::``)."""
    creds = text.split("::", 1)[1] if text.startswith("K10") and "::" in text else text
    return bool(_BOOTSTRAP_TOKEN.match(creds))


def random_password() -> str:
    """token.Random(16): 32 lowercase hex characters."""
    return secrets.token_hex(16)


def read_passwd(server_dir: Path) -> dict[str, str]:
    """cred/passwd: ``password,user,uid,group`` lines → user → password."""
    path = server_dir / "cred" / "passwd"
    out: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            parts = line.split(",")
            if len(parts) >= 2:
                out[parts[1]] = parts[0]
    except OSError:
        pass
    return out


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def write_passwd(server_dir: Path, server_pw: str, node_pw: str) -> None:
    _write_private(
        server_dir / "cred" / "passwd",
        f"{server_pw},server,server,k3s:server\n{node_pw},node,node,k3s:agent\n",
    )


def _symlink(link: Path, target: str) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def write_token_files(
    server_dir: Path, server_pw: str, agent_pw: str | None, advertise: str, port: int
) -> None:
    """server/token, agent-token and node-token, plus the log lines printTokens writes."""
    digest = ca_hash((server_dir / "tls" / "server-ca.crt").read_bytes())
    token = server_dir / "token"
    _write_private(token, f"K10{digest}::server:{server_pw}\n")
    agent_token = server_dir / "agent-token"
    if agent_pw:
        if agent_token.is_symlink():
            agent_token.unlink()
        _write_private(agent_token, f"K10{digest}::node:{agent_pw}\n")
    else:
        _symlink(agent_token, str(token))
    _symlink(server_dir / "node-token", str(token))
    logs.info(f"Server node token is available at {token}")
    logs.info(
        f"To join server node to cluster: k3s server -s https://{advertise}:{port}"
        " -t ${SERVER_NODE_TOKEN}"
    )
    logs.info(f"Agent node token is available at {agent_token}")
    logs.info(
        f"To join agent node to cluster: k3s agent -s https://{advertise}:{port}"
        " -t ${AGENT_NODE_TOKEN}"
    )
