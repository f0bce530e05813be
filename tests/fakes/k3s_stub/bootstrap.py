"""Cluster bootstrap data in the datastore (pkg/cluster/{storage,encrypt}.go).

Key ``/bootstrap/<hex(sha256(password))[:12]>``; value ``<salt>:<base64(nonce||AES-256-GCM)>``
with the key PBKDF2-SHA1(password, salt, 4096, 32); plaintext is JSON keyed by the bootstrap
field names, each ``{"Timestamp": RFC3339, "Content": base64(file bytes)}``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.fakes.k3s_stub import logs
from tests.fakes.k3s_stub.datastore import Store
from tests.fakes.k3s_stub.tls import BOOTSTRAP_FILES, write_file

PREFIX = "/bootstrap"
DIFFERENT_TOKEN = "bootstrap data already found and encrypted with different token"


class BootstrapError(Exception):
    """Bootstrap data that cannot be used with this token."""


def key_for(password: str) -> str:
    return f"{PREFIX}/{hashlib.sha256(password.encode()).hexdigest()[:12]}"


def _aes_key(password: str, salt: str) -> bytes:
    return hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(), 4096, 32)


def encrypt(password: str, plaintext: bytes) -> bytes:
    salt = secrets.token_hex(8)
    nonce = os.urandom(12)
    sealed = AESGCM(_aes_key(password, salt)).encrypt(nonce, plaintext, None)
    return f"{salt}:{base64.b64encode(nonce + sealed).decode()}".encode()


def decrypt(password: str, value: bytes) -> bytes:
    salt, _, b64 = value.decode().partition(":")
    raw = base64.b64decode(b64)
    try:
        return AESGCM(_aes_key(password, salt)).decrypt(raw[:12], raw[12:], None)
    except InvalidTag as exc:
        raise BootstrapError(DIFFERENT_TOKEN) from exc


def serialize(server_dir: Path) -> bytes:
    data: dict[str, dict[str, str]] = {}
    for field, rel in BOOTSTRAP_FILES.items():
        path = server_dir / rel
        if not path.exists():
            continue
        stamp = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
        data[field] = {
            "Timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Content": base64.b64encode(path.read_bytes()).decode(),
        }
    return json.dumps(data).encode()


def write_to_disk(server_dir: Path, plaintext: bytes) -> None:
    data = json.loads(plaintext)
    for field, rel in BOOTSTRAP_FILES.items():
        entry = data.get(field)
        if isinstance(entry, dict) and "Content" in entry:
            content = base64.b64decode(entry["Content"])
            path = server_dir / rel
            if not path.exists() or path.read_bytes() != content:
                write_file(path, content)


async def existing(store: Store, password: str) -> bytes | None:
    """Our bootstrap plaintext, None for a fresh cluster; BootstrapError for another token."""
    rows = await store.list(PREFIX)
    if not rows:
        return None
    ours = rows.get(key_for(password))
    if ours is None:
        raise BootstrapError(DIFFERENT_TOKEN)
    return decrypt(password, ours)


async def save(store: Store, server_dir: Path, password: str) -> None:
    logs.info("Saving cluster bootstrap data to datastore")
    value = encrypt(password, serialize(server_dir))
    if not await store.create(key_for(password), value):
        logs.warning("bootstrap key already exists")
