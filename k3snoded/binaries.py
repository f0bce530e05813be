"""The k3s binary across a rolling upgrade: its version, the new release staged beside it, the
swap, and the previous binary kept for a rollback.

Files, all in ``k3s.binary``'s directory (one filesystem, so every rename is atomic):

* ``k3s.binary`` itself (``/usr/local/bin/k3s``);
* ``.<name>.next``: the new release, downloaded (or copied from ``k3s.airgap_file``) and
  verified against its sha256 by ``install.install_release`` **while the old k3s still runs**,
  so the machine is down only for the restart;
* ``.<name>.previous``: the binary the last swap replaced; ``restore`` puts it back.

A swap renames the staged file over the binary (a running k3s keeps its old inode); the k3s
process is restarted afterwards by the upgrader. The version of a file is what it prints for
``k3s --version`` (``versions.parse_version_output``): a staged file that reports another
version than the one asked for (an airgap file not yet replaced) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from k3snoded.config import Config
from k3snoded.errors import InstallError
from k3snoded.install import install_release, spec_from_config
from k3snoded.versions import parse_version_output

log = logging.getLogger(__name__)

VERSION_TIMEOUT = 20.0  # seconds for ``k3s --version``


async def binary_version(binary: Path, limit: float = VERSION_TIMEOUT) -> str:
    """The release ``binary --version`` names; "" when it cannot be run or does not say."""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    except OSError as err:
        log.debug("cannot run %s --version: %s", binary, err)
        return ""
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return ""
    return parse_version_output(out.decode(errors="replace")) or ""


def staged_path(binary: Path) -> Path:
    return binary.with_name(f".{binary.name}.next")


def previous_path(binary: Path) -> Path:
    return binary.with_name(f".{binary.name}.previous")


class K3sBinary:
    """The upgrader's view of ``k3s.binary`` (``upgrader.Binary``)."""

    def __init__(self, cfg: Callable[[], Config]) -> None:
        self._cfg = cfg

    @property
    def path(self) -> Path:
        return self._cfg().k3s.binary

    async def version(self) -> str:
        return await binary_version(self.path)

    async def stage(self, version: str) -> None:
        """Download (or copy) and verify ``version`` into the staging file."""
        k3s = self._cfg().k3s
        target = staged_path(self.path)
        await install_release(spec_from_config(k3s, version), target)
        found = await binary_version(target)
        if found != version:
            await asyncio.to_thread(_unlink, target)
            where = k3s.airgap_file or k3s.mirror
            raise InstallError(
                f"the k3s installed for {version} from {where} reports "
                f"{found or 'no version'}; refusing it"
            )

    async def swap(self) -> None:
        """The staged release becomes the binary; the current one is kept as the previous."""
        await asyncio.to_thread(_swap, self.path)
        log.info("installed the staged k3s at %s (previous kept for a rollback)", self.path)

    async def restore(self) -> bool:
        """Put the previous binary back; False when there is none."""
        restored = await asyncio.to_thread(_restore, self.path)
        if restored:
            log.info("restored the previous k3s binary at %s", self.path)
        return restored

    async def staged(self) -> str:
        """The version of the staged file ("" when there is none)."""
        target = staged_path(self.path)
        if not await asyncio.to_thread(target.exists):
            return ""
        return await binary_version(target)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _swap(binary: Path) -> None:
    staged, previous = staged_path(binary), previous_path(binary)
    if not staged.exists():
        raise InstallError(f"nothing staged at {staged}")
    if binary.exists():
        link = previous.with_name(previous.name + ".tmp")
        _unlink(link)
        os.link(binary, link)  # the current binary, under a second name
        os.replace(link, previous)
    os.replace(staged, binary)
    _sync_dir(binary.parent)


def _restore(binary: Path) -> bool:
    previous = previous_path(binary)
    if not previous.exists():
        return False
    os.replace(previous, binary)
    _sync_dir(binary.parent)
    return True


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
