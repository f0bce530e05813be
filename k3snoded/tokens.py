"""The cluster token: generate, read, normalise, store as a secret; never log it.

Formats follow k3s (``pkg/clientaccess/token.go``): the *short* form is just a password; the
*secure* form is ``K10<sha256 of the cluster CA, 64 hex>::<user>:<password>`` (or a kubeadm
bootstrap token as credentials). k3s keys and encrypts its datastore contents with the password
part only, so ``K10<hash>::server:abc`` and ``abc`` are the same cluster secret: ``normalize``
returns that part, and k3snoded derives everything of its own (announcement signing) from it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

from k3snoded.atomic import write_atomic
from k3snoded.errors import K3snodedError

_PREFIX = "K10"
_CA_HASH_LENGTH = 64  # sha256 in lower-case hex
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


def normalize(token: str) -> str:
    """The password part of a k3s token (what k3s keys its datastore secrets with).

    ``abc`` → ``abc``; ``K10<64 hex>::server:abc`` → ``abc``; ``K10::node:abc`` → ``abc``;
    a bootstrap token as credentials (``K10<hash>::abcdef.0123456789abcdef``) is returned whole.
    Raises ``TokenError`` with k3s's own wording (``token must not be empty``,
    ``invalid token CA hash length``, ``invalid token format``).
    """
    if not token:
        raise TokenError("token must not be empty")
    if not token.startswith(_PREFIX):
        token = f"{_PREFIX}:::{token}"
    head, sep, credentials = token.partition("::")
    if not sep:
        raise TokenError("invalid token format")
    ca_hash = head[len(_PREFIX) :]
    if ca_hash and len(ca_hash) != _CA_HASH_LENGTH:
        raise TokenError("invalid token CA hash length")
    _user, colon, password = credentials.partition(":")
    if colon and password:
        return password
    if _BOOTSTRAP_TOKEN.match(credentials):
        return credentials
    raise TokenError("invalid token format")


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
