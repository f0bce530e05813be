"""Crash-safe file writes: a reader sees the old content or the new, never a torn file.

``write_atomic`` creates a temporary file next to the target *with the final mode from the
start* (so a secret is never readable by others, not even for a moment), writes and fsyncs it,
renames it over the target and fsyncs the directory so the rename survives a power cut.
``read_json_state`` / ``write_json_state`` persist small JSON documents (e.g. the last role).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

_TEMP_PREFIX = ".k3snoded-tmp-"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically; the file ends with exactly ``mode``.

    Raises ``OSError`` when the directory does not exist or cannot be written; no temporary
    file is left behind in that case.
    """
    path = Path(path)
    directory = path.parent
    for _ in range(16):  # O_EXCL collisions are astronomically unlikely; stay bounded anyway
        tmp = directory / f"{_TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"cannot create a temporary file in {directory}")
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits the caller asked for
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (best effort on odd filesystems)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_json_state(path: Path, state: dict[str, Any], mode: int = 0o600) -> None:
    """Persist a small JSON document atomically (sorted keys, one trailing newline)."""
    text = json.dumps(state, sort_keys=True, indent=2) + "\n"
    write_atomic(path, text.encode("utf-8"), mode)


def read_json_state(path: Path) -> dict[str, Any] | None:
    """Read what ``write_json_state`` wrote; ``None`` if absent, unreadable or not a JSON object.

    State files are hints (the datastore is the truth), so a damaged one is treated as absent
    rather than stopping the daemon.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
