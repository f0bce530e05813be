"""Cluster bootstrap data in the datastore (pkg/cluster/{storage,encrypt}.go).

Key ``/bootstrap/<hex(sha256(password))[:12]>``; value ``<salt>:<base64(nonce||AES-256-GCM)>``
with the key PBKDF2-SHA1(password, salt, 4096, 32); plaintext is JSON keyed by the bootstrap
field names, each ``{"Timestamp": RFC3339, "Content": base64(file bytes)}``.
"""

from __future__ import annotations

import asyncio
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


_WAITING = "waiting for data to be populated by another server"
LOCK_POLL = 1.0  # storageBootstrap polls once a second
LOCK_ATTEMPTS = 5  # maxBootstrapWaitAttempts: then the lock is deleted and taken again


async def _ours(store: Store, password: str) -> bytes | None:
    """Our key's value (b"" = the lock), None without any key; BootstrapError for another
    token's key (getBootstrapKeyFromStorage)."""
    rows = await store.list(PREFIX)
    if not rows:
        return None
    if len(rows) > 1:
        logs.warning("found multiple bootstrap keys in storage")
    ours = rows.get(key_for(password))
    if ours is None:
        raise BootstrapError(DIFFERENT_TOKEN)
    return ours


async def existing(store: Store, password: str) -> bytes | None:
    """Pre-2023 k3s: our bootstrap plaintext, None for a fresh cluster."""
    ours = await _ours(store, password)
    return None if ours is None else decrypt(password, ours)


async def lock_or_load(store: Store, password: str, stopping: asyncio.Event) -> bytes | None:
    """storageBootstrap since 2023-04 (commit d95980bba): None once this server holds the
    bootstrap lock (an empty value under our key) and must create the cluster; else the
    bootstrap plaintext another server saved. Waits while another server holds the lock,
    and takes the lock over after ``LOCK_ATTEMPTS`` polls (a holder that died)."""
    key = key_for(password)
    attempts = 0
    while not stopping.is_set():
        attempts += 1
        ours = await _ours(store, password)
        if ours is None:
            if await store.create(key, b""):
                logs.info("Bootstrap key locked for initial create")
                return None
            logs.info(f"Bootstrap key already locked - {_WAITING}")
        elif not ours:
            if attempts >= LOCK_ATTEMPTS:
                logs.info("Bootstrap key lock timed out - deleting lock and retrying")
                attempts = 0
                await store.delete(key)
            else:
                logs.info(f"Bootstrap key is locked - {_WAITING}")
        else:
            return decrypt(password, ours)
        await asyncio.sleep(LOCK_POLL)
    return None


async def save(store: Store, server_dir: Path, password: str) -> None:
    """cluster.Save: create our key, or fill the lock we hold (an empty value)."""
    logs.info("Saving cluster bootstrap data to datastore")
    value = encrypt(password, serialize(server_dir))
    key = key_for(password)
    if await store.create(key, value):
        return
    current = await store.revision(key)
    if current is not None and not current[1]:
        logs.info("Bootstrap key lock is held")
        if await store.update(key, value, current[0]) is not None:
            return
    logs.warning("bootstrap key already exists")
