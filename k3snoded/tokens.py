"""The cluster token: generate, read, parse, normalise, store as a secret; never log it.

Formats follow k3s (``pkg/clientaccess/token.go`` ``parseToken``): the *short* form is just a
password; the *secure* form is ``K10<sha256 of the cluster CA, 64 hex>::<user>:<password>`` (or
a kubeadm bootstrap token as credentials). An agent given a secure token checks the CA hash
against the server's ``/cacerts`` before it sends any credentials (``capin.py``). k3s keys and
encrypts its datastore contents with the password part only, so ``K10<hash>::server:abc`` and
``abc`` are the same cluster secret: ``normalize`` returns that part, and k3snoded derives
everything of its own (announcement signing) from it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from k3snoded.atomic import write_atomic
from k3snoded.errors import K3snodedError

_PREFIX = "K10"
_CA_HASH_LENGTH = 64  # sha256 in hex: k3s checks only the length
_CA_HASH = re.compile(r"^[0-9a-f]{64}$")  # what k3s computes, so the only hash that can match
_BOOTSTRAP_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_REDACTED = "<redacted>"


class TokenError(K3snodedError):
    """A token file is unusable or a token is malformed. The message never contains the token."""


def generate_token() -> str:
    """A new cluster token: 64 lower-case hex characters (256 bits from ``secrets``).

    It is a k3s *short* token (a bare password), which is what the first server of a new
    cluster must be started with (the CA hash of the secure form does not exist yet). It uses
    only ``[0-9a-f]``, so it survives shells, YAML, URLs and systemd unquoted.
    """
    return secrets.token_hex(32)


def read_token(path: Path) -> str:
    """Read a token file the way k3s does (``util.ReadFile``: surrounding whitespace trimmed).

    Raises ``TokenError`` naming the file and the reason: missing, not a regular file,
    unreadable, not UTF-8, or empty.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TokenError(f"token file {path} does not exist") from None
    except OSError as exc:
        raise TokenError(f"cannot access token file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TokenError(f"token file {path} is not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TokenError(f"cannot read token file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError(f"token file {path} is not UTF-8 text") from None
    token = text.strip()
    if not token:
        raise TokenError(f"token file {path} is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise TokenError(f"token file {path} holds more than one word (whitespace inside)")
    return token


@dataclass(frozen=True)
class Token:
    """A k3s token, parsed. ``repr`` hides the password."""

    ca_hash: str  # "" when the token carries none (a short token, or ``K10::...``)
    username: str  # "" for a short token and for a bootstrap token
    password: str  # the password, or the whole ``<id>.<secret>`` of a bootstrap token
    bootstrap: bool = False  # a kubeadm-style bootstrap token (sent as a Bearer token)

    def __repr__(self) -> str:
        return f"Token(ca_hash={self.ca_hash!r}, username={self.username!r}, password=<redacted>)"


def parse_token(token: str) -> Token:
    """Parse a token exactly as k3s's ``parseToken`` does.

    A token not starting with ``K10`` is a short one (``K10:::`` + it, or ``K10::`` + it for a
    bootstrap token). After ``K10`` comes the CA hash up to the first ``::`` (any 64 characters,
    or none; without any ``::`` there is no hash and the rest is the credentials), then either a
    bootstrap token ``[a-z0-9]{6}.[a-z0-9]{16}`` or ``<user>:<password>`` with a non-empty
    password (the user may be empty; the password may hold colons). Raises ``TokenError`` with
    k3s's own wording: ``token must not be empty``, ``invalid token CA hash length``,
    ``invalid token format``.
    """
    if not token:
        raise TokenError("token must not be empty")
    if not token.startswith(_PREFIX):
        glue = "::" if _BOOTSTRAP_TOKEN.match(token) else ":::"
        token = _PREFIX + glue + token
    rest = token[len(_PREFIX) :]
    ca_hash, sep, credentials = rest.partition("::")
    if not sep:
        ca_hash, credentials = "", rest
    elif ca_hash and len(ca_hash) != _CA_HASH_LENGTH:
        raise TokenError("invalid token CA hash length")
    if _BOOTSTRAP_TOKEN.match(credentials):
        return Token(ca_hash, "", credentials, bootstrap=True)
    username, colon, password = credentials.partition(":")
    if not colon or not password:
        raise TokenError("invalid token format")
    return Token(ca_hash, username, password)


def secure_token(ca_hash: str, username: str, password: str) -> str:
    """``K10<ca_hash>::<username>:<password>``, the form k3s writes to ``server/token``
    (``clientaccess.FormatToken``). ``ca_hash`` must be a hash k3s can match."""
    if not is_ca_hash(ca_hash):
        raise ValueError("a CA hash is 64 lower-case hex digits")
    if not password or ":" in username:
        raise ValueError("a secure token needs a password and a user name without ':'")
    return f"{_PREFIX}{ca_hash}::{username}:{password}"


def is_ca_hash(text: str) -> bool:
    """64 lower-case hex digits: the only form of CA hash that can match k3s's (k3s parses any
    64 characters, then compares them with the lower-case hex digest of ``/cacerts``)."""
    return bool(_CA_HASH.match(text))


def normalize(token: str) -> str:
    """The password part of a k3s token (what k3s keys its datastore secrets with).

    ``abc`` → ``abc``; ``K10<64 hex>::server:abc`` → ``abc``; ``K10::node:abc`` → ``abc``;
    a bootstrap token as credentials (``K10<hash>::abcdef.0123456789abcdef``) is returned whole.
    Raises ``TokenError`` as ``parse_token`` does.
    """
    return parse_token(token).password


def write_secret(path: Path, data: str | bytes) -> None:
    """Write a secret atomically with mode 0600 from the first byte (``write_atomic``)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    write_atomic(Path(path), payload, 0o600)


def redact(text: str, *tokens: str) -> str:
    """``text`` with every occurrence of each token (and its password part) replaced."""
    secrets_to_hide: set[str] = set()
    for token in tokens:
        if not token:
            continue
        secrets_to_hide.add(token)
        with contextlib.suppress(TokenError):
            secrets_to_hide.add(normalize(token))
    for secret in sorted(secrets_to_hide, key=len, reverse=True):
        if len(secret) >= 4:  # never shred ordinary text for a degenerate "token"
            text = text.replace(secret, _REDACTED)
    return text
