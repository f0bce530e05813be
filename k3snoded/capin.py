"""The cluster CA pin: agents join only a server that serves the cluster's CA.

A k3s agent given a *secure* token (``K10<ca-hash>::node:<password>``) fetches ``/cacerts``
without credentials and sends its password only when the SHA-256 of that bundle is the token's
hash (``pkg/clientaccess/token.go``). So k3snoded never starts an agent without a hash, and
writes the agent's token file in that form:

* **where the hash comes from**, first found wins: a secure token in ``cluster.token_file`` or
  ``cluster.agent_token_file`` (the operator's pin); the fleet's ``ca_hash`` flag in the
  datastore (inserted once by a ready server, never overwritten: another hash later is an
  alarm); this machine's own k3s server; the signed announcements of peers (servers first);
  the token file a previous run wrote for k3s. Sources that disagree raise an alarm (logged
  once per pair of values, and in ``k3snoded status``); the operator's pin is kept.
* **which password**: fleets bootstrapped by this version run their servers with an *agent
  token* (``--agent-token-file``), derived from the cluster token, so that a machine holding
  only the agent token cannot use k3s's server-only routes nor decrypt k3s's bootstrap data.
  The ``agent_token`` flag records it before the first server starts; k3s keeps the node
  password of the cluster's first bootstrap in its datastore (``cred/passwd``), so a fleet
  bootstrapped without it keeps the cluster token's password for agents.
* **the hash of a server's CA**: the one k3s itself wrote into ``<data-dir>/server/token``
  (``hashCA``: the file's bytes for one certificate, the root's DER for a chain), else the
  SHA-256 of ``server-ca.crt`` when it holds one certificate.

Blocking file functions are called from a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from k3snoded.atomic import write_atomic
from k3snoded.config import Config
from k3snoded.tokens import Token, TokenError, is_ca_hash, parse_token, read_token

log = logging.getLogger("k3snoded.capin")

# Names, not secrets (hence the noqa for the "hard-coded password" lint).
CA_HASH_FLAG = "ca_hash"  # the datastore flag: the cluster CA hash, inserted once
AGENT_TOKEN_FLAG = "agent_token"  # noqa: S105 - present: the servers take the agent token
AGENT_TOKEN_DERIVED = "derived-v1"  # noqa: S105 - that flag's value
AGENT_TOKEN_NONE = "none"  # noqa: S105 - a cluster taken over keeps its node password
JOIN_TOKEN = "join-token"  # noqa: S105 - <state_dir>/join-token.<16 hex of the hash>: an agent's
AGENT_TOKEN = "agent-token"  # noqa: S105 - <state_dir>/agent-token: a server's


@dataclass(frozen=True)
class Pin:
    """What this machine knows of the cluster: the CA hash agents pin, where it was learned,
    and whether the servers take k3snoded's agent token."""

    ca_hash: str = ""
    source: str = ""  # "token file", "datastore", "k3s", "peers", "state"
    agent_token: bool = False


def agent_password(key: bytes) -> str:
    """The agent token k3snoded gives the servers of fleets it bootstrapped: 32 hex, an HMAC of
    the cluster key (the token and the cluster name), so every server computes the same one
    and it tells nothing about the token."""
    return hmac.new(key, b"k3snoded agent token\0", hashlib.sha256).hexdigest()[:32]


def hash_of_bundle(pem: bytes) -> str | None:
    """k3s's hash of a CA bundle when it holds one certificate (the bytes, as served); None for
    a chain (k3s hashes the root's DER: read it from k3s's token file instead)."""
    if pem.count(b"-----BEGIN CERTIFICATE-----") != 1:
        return None
    return hashlib.sha256(pem).hexdigest()


def local_ca_hash(cfg: Config) -> str | None:
    """The CA hash of this machine's k3s server, as k3s computes it, or None."""
    server = cfg.k3s.data_dir / "server"
    with contextlib.suppress(OSError, TokenError):
        written = parse_token(read_token(server / "token")).ca_hash
        if is_ca_hash(written):
            return written
    with contextlib.suppress(OSError):
        return hash_of_bundle((server / "tls" / "server-ca.crt").read_bytes())
    return None


def own_token(cfg: Config) -> Token:
    """The token this machine holds: the agent token of an agent-only machine, else the
    cluster token (TokenError when unreadable)."""
    path = cfg.cluster.agent_token_file or cfg.cluster.token_file
    return parse_token(read_token(path))


def configured_hash(cfg: Config) -> str:
    """The CA hash of a secure token in the machine's token file ("" when it has none)."""
    try:
        found = own_token(cfg).ca_hash
    except (OSError, TokenError):
        return ""
    return found if is_ca_hash(found) else ""


def join_token_path(cfg: Config, ca_hash: str) -> Path:
    """The agent's ``--token-file``; the hash is in the name, so a new pin changes k3s's command
    line and restarts an agent that runs with an old one."""
    return cfg.node.state_dir / f"{JOIN_TOKEN}.{ca_hash[:16]}"


def agent_token_path(cfg: Config) -> Path:
    return cfg.node.state_dir / AGENT_TOKEN


def remembered_hash(cfg: Config) -> str:
    """The hash of the join token a previous run wrote ("" when none)."""
    found = sorted(cfg.node.state_dir.glob(f"{JOIN_TOKEN}.*"), key=_mtime, reverse=True)
    for path in found:
        with contextlib.suppress(OSError, TokenError):
            ca_hash = parse_token(read_token(path)).ca_hash
            if is_ca_hash(ca_hash):
                return ca_hash
    return ""


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def write_join_token(cfg: Config, pin: Pin, key: bytes) -> Path:
    """Write the agent's secure token (0600) for ``pin`` and remove older ones: the agent token
    of an agent-only machine, the derived one where the servers take it (``key``: the cluster
    key), else the cluster token's password. Blocking."""
    if not is_ca_hash(pin.ca_hash):
        raise ValueError("an agent's token needs the cluster CA hash")
    if cfg.cluster.agent_token_file is not None:
        mine = own_token(cfg)
        credentials = mine.password if mine.bootstrap else f"node:{mine.password}"
    elif pin.agent_token:
        credentials = f"node:{agent_password(key)}"
    else:
        credentials = f"node:{own_token(cfg).password}"
    path = join_token_path(cfg, pin.ca_hash)
    text = f"K10{pin.ca_hash}::{credentials}\n".encode()
    _write_if_changed(path, text)
    for old in cfg.node.state_dir.glob(f"{JOIN_TOKEN}.*"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()
    return path


def write_agent_token(cfg: Config, key: bytes) -> Path:
    """A server's ``--agent-token-file`` (0600): the derived agent token. Blocking."""
    text = agent_password(key) + "\n"
    path = agent_token_path(cfg)
    _write_if_changed(path, text.encode())
    return path


def _write_if_changed(path: Path, content: bytes) -> None:
    with contextlib.suppress(OSError):
        if path.read_bytes() == content and (path.stat().st_mode & 0o077) == 0:
            return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, content, 0o600)


def server_takes_agent_token(cfg: Config, key: bytes) -> bool:
    """For a single server without a fleet: whether its k3s runs with the agent token. Yes on a
    new cluster (no ``cred/passwd`` yet) and when its node password already is the agent token;
    no for a cluster bootstrapped without one (k3s keeps that node password). Blocking."""
    passwd = cfg.k3s.data_dir / "server" / "cred" / "passwd"
    try:
        lines = passwd.read_text().splitlines()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    wanted = agent_password(key)
    for line in lines:
        fields = line.split(",")
        if len(fields) >= 2 and fields[1] == "node":
            return fields[0] == wanted
    return True


def vote(announced: list[tuple[str, bool, bool]]) -> tuple[Pin | None, str]:
    """The pin peers announce: ``(ca_hash, agent_token, from_a_server)`` each. Servers' word
    first, then any; ``(None, alarm)`` when those disagree, ``(None, "")`` when nobody says."""
    for servers_only in (True, False):
        said = {(h, t) for h, t, server in announced if h and (server or not servers_only)}
        if len(said) == 1:
            ca_hash, agent_token = said.pop()
            return Pin(ca_hash, "peers", agent_token), ""
        if len(said) > 1:
            hashes = ", ".join(sorted(f"{h[:16]}…" for h, _ in said))
            return None, f"peers announce different cluster CAs ({hashes})"
    return None, ""


_RANK = {"peers": 1, "k3s": 2, "datastore": 3}


class CaPin:
    """The pin of one machine, from every source; alarms when they disagree."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.configured = ""  # the operator's: a secure token in the token file
        self.learned: Pin = Pin()  # from the datastore, our k3s, or peers
        self.remembered = ""  # from the join token a previous run wrote
        self.own = ""  # our own k3s server's
        self.vetoed = False  # the datastore's hash contradicts what servers announce, signed
        self.agent_token = cfg.cluster.agent_token_file is not None
        self.alarms: dict[str, str] = {}  # source -> sentence (status); logged once each
        self._logged: set[str] = set()

    async def load(self) -> None:
        self.configured = await asyncio.to_thread(configured_hash, self.cfg)
        self.remembered = await asyncio.to_thread(remembered_hash, self.cfg)

    @property
    def pin(self) -> Pin:
        if self.configured:
            return Pin(self.configured, "token file", self.agent_token)
        if self.vetoed:
            return Pin(agent_token=self.agent_token)
        if self.learned.ca_hash:
            return replace(self.learned, agent_token=self.agent_token)
        if self.remembered:
            return Pin(self.remembered, "state", self.agent_token)
        return Pin(agent_token=self.agent_token)

    def learn(self, ca_hash: str, source: str) -> None:
        """A hash from ``source`` ("datastore", "k3s" or "peers", in that order of trust); an
        alarm when it differs from the token file's pin or, for our own k3s, the fleet's."""
        if not is_ca_hash(ca_hash):
            return
        if source == "k3s":
            self.own = ca_hash
        if self.configured and ca_hash != self.configured:
            self.alarm(
                source,
                f"the {source} says the cluster CA hash is {ca_hash}, but the token file pins "
                f"{self.configured}: agents keep the token file's and refuse other servers",
            )
        else:
            self.clear(source)
        held = self.learned
        if source == "k3s" and held.source == "datastore" and ca_hash != held.ca_hash:
            self.alarm(
                "k3s",
                f"this server's cluster CA hash is {ca_hash}, the fleet's is {held.ca_hash} "
                f"(datastore flag {CA_HASH_FLAG}): agents pinning the fleet's refuse this server; "
                "k3snoded never replaces the fleet's CA hash",
            )
            return
        if _RANK[source] >= _RANK.get(held.source, 0):
            self.learned = Pin(ca_hash, source)

    @property
    def announced_hash(self) -> str:
        """What this machine tells its peers (signed): its own k3s's CA hash, first-hand, else
        the fleet's from the datastore; never what it heard from peers."""
        if self.own:
            return self.own
        return self.learned.ca_hash if self.learned.source == "datastore" else ""

    def check_peers(self, announced: list[tuple[str, bool, bool]]) -> None:
        """A fleet member: the datastore's hash must be the one the servers announce, signed
        (someone holding only the datastore credentials can rewrite the flag, not sign)."""
        heard, _ = vote(announced)
        held = self.learned
        if heard is None or held.source != "datastore" or heard.ca_hash == held.ca_hash:
            self.vetoed = False
            self.clear("datastore")
            return
        self.vetoed = True
        self.alarm(
            "datastore",
            f"the datastore's {CA_HASH_FLAG} flag says {held.ca_hash}, but the servers announce "
            f"{heard.ca_hash} (signed): no agent joins until they agree (the flag may have been "
            "rewritten by someone with the datastore credentials)",
        )

    def set_agent_token(self, used: bool) -> None:
        if self.cfg.cluster.agent_token_file is None:
            self.agent_token = used

    def alarm(self, source: str, sentence: str) -> None:
        self.alarms[source] = sentence
        if sentence not in self._logged:
            self._logged.add(sentence)
            log.error("cluster CA pin: %s", sentence)

    def clear(self, source: str) -> None:
        self.alarms.pop(source, None)

    def status(self) -> dict[str, Any]:
        pin = self.pin
        return {
            "ca_hash": pin.ca_hash or None,
            "source": pin.source or None,
            "agent_token": pin.agent_token,
            "alarms": sorted(self.alarms.values()),
        }


# ---- the fleet's side (fleet.py): the datastore flags ------------------------------------------


class FlagStore(Protocol):
    """What the fleet's pin needs of the datastore (``datastore.base.Datastore``)."""

    async def claim_flag(self, name: str, value: str) -> str: ...


def learn_flags(pins: CaPin, flags: Mapping[str, str]) -> None:
    """What the fleet's flags say: the agent token (claimed before the first server started, so
    final once the cluster is bootstrapped) and the CA hash (once a server was ready)."""
    pins.set_agent_token(flags.get(AGENT_TOKEN_FLAG) == AGENT_TOKEN_DERIVED)
    pins.learn(flags.get(CA_HASH_FLAG, ""), "datastore")


async def claim_agent_token(pins: CaPin, ds: FlagStore, cfg: Config, key: bytes) -> None:
    """The first server is about to start: on a new cluster its k3s creates the node password
    from the agent token, so the fleet uses it from now on; a cluster taken over from a plain
    k3s install (this machine's k3s already has a ``cred/passwd`` with another node password)
    keeps its own. Insert-if-absent: a flag already there stays."""
    used = await asyncio.to_thread(server_takes_agent_token, cfg, key)
    value = AGENT_TOKEN_DERIVED if used else AGENT_TOKEN_NONE
    stored = await ds.claim_flag(AGENT_TOKEN_FLAG, value)
    pins.set_agent_token(stored == AGENT_TOKEN_DERIVED)


async def publish(pins: CaPin, ds: FlagStore, cfg: Config) -> bool:
    """This server's k3s is ready: insert its CA hash as the fleet's if there is none, and
    compare (another hash already there is an alarm, never an overwrite). False when the hash
    cannot be read yet (try again later)."""
    mine = await asyncio.to_thread(local_ca_hash, cfg)
    if mine is None:
        return False
    stored = await ds.claim_flag(CA_HASH_FLAG, mine)
    pins.learn(stored, "datastore")
    pins.learn(mine, "k3s")
    if stored == mine:
        pins.clear("k3s")
    return True
