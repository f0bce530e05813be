"""Checks of ``cluster.agent_token_file``: an agent-only machine holding only the agent token.

Private to ``k3snoded.config`` (called from ``_config_check.check``). Such a machine can only
ever be a k3s agent joining a registration address it is told, and must know the cluster CA
hash from the token itself: without the cluster token it verifies nothing its peers sign
(``docs/security.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from k3snoded.model import RolePreference
from k3snoded.tokens import TokenError, is_ca_hash, parse_token, read_token

if TYPE_CHECKING:
    from k3snoded.config import Config

KEY = "cluster.agent_token_file"
WHERE = "copy <data-dir>/server/agent-token from a server of the fleet (K10<ca-hash>::node:...)"


class Sink(Protocol):
    def add(self, key: str, reason: str) -> None: ...

    def explicit(self, key: str) -> bool: ...


def check(c: Sink, cfg: Config, check_file: Callable[[Path], str | None]) -> None:
    path = cfg.cluster.agent_token_file
    if path is None:
        _cluster_token(c, cfg.cluster.token_file)
        return
    if c.explicit("cluster.token_file"):
        c.add(
            KEY,
            "and cluster.token_file are both set; a machine holds one of them: the agent token "
            "(an agent-only machine that must not hold the cluster token) or the cluster token",
        )
    reason = check_file(path)
    if reason is None:
        reason = _ca_hash_problem(path)
    if reason:
        c.add(KEY, reason)
    if cfg.node.role is not RolePreference.AGENT:
        c.add(
            "node.role",
            f"must be agent when {KEY} is set: with the agent token only, this machine can "
            "never be a k3s server",
        )
    if cfg.datastore.endpoint and not cfg.datastore.is_sqlite:
        c.add(
            "datastore.endpoint",
            f"is set, but a machine with only the agent token ({KEY}) cannot be a fleet member: "
            "members prove the cluster token to each other; remove the datastore credentials "
            "from agent-only machines",
        )
    if not cfg.registration.address:
        c.add(
            "registration.address",
            f"is needed with {KEY}: without the cluster token this machine cannot verify the "
            "registration address its peers announce; set the VIP or your load balancer's "
            "address",
        )


def _cluster_token(c: Sink, path: Path) -> None:
    """A secure cluster token pins the CA for this machine's agent: its hash must be one k3s
    can match (k3s itself parses any 64 characters)."""
    try:
        ca_hash = parse_token(read_token(path)).ca_hash
    except TokenError:
        return  # reported by the token file check
    if ca_hash and not is_ca_hash(ca_hash):
        c.add(
            "cluster.token_file",
            f"the CA hash in {path} is not 64 lower-case hex digits, so this machine's agent "
            "would never match the cluster's CA; copy <data-dir>/server/token from a server, "
            "or use the short token",
        )


def _ca_hash_problem(path: Path) -> str | None:
    try:
        token = parse_token(read_token(path))
    except TokenError as exc:
        return str(exc)
    if not token.ca_hash:
        return (
            f"the agent token in {path} has no CA hash, so k3s would send it to whatever "
            f"answers at the registration address; {WHERE}"
        )
    if not is_ca_hash(token.ca_hash):
        return (
            f"the CA hash in {path} is not 64 lower-case hex digits, so it can never match the "
            f"cluster's; {WHERE}"
        )
    return None
