"""The k3s binary across an upgrade (k3snoded/binaries.py), with stand-in releases served by a
local mirror: staged and verified beside the running binary, swapped, restored."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from k3snoded.binaries import K3sBinary, binary_version, previous_path, staged_path
from k3snoded.config import Config, K3sConfig
from k3snoded.errors import InstallError
from k3snoded.model import InstallMode
from tests.fakes.mirror import serve_mirror
from tests.fakes.releases import release, write_mirror

OLD, NEW = "v1.31.4+k3s1", "v1.31.5+k3s1"


def _cfg(binary: Path, mirror: str) -> Config:
    k3s = K3sConfig(binary=binary, install=InstallMode.AUTO, version=OLD, mirror=mirror)
    return dataclasses.replace(Config(), k3s=k3s)


async def test_stage_swap_restore(tmp_path: Path) -> None:
    write_mirror(tmp_path / "mirror", {OLD: release(OLD), NEW: release(NEW)})
    binary = tmp_path / "bin" / "k3s"
    binary.parent.mkdir()
    binary.write_bytes(release(OLD))
    binary.chmod(0o755)
    async with serve_mirror(tmp_path / "mirror") as mirror:
        k = K3sBinary(lambda: _cfg(binary, mirror.url))
        assert await k.version() == OLD
        await k.stage(NEW)
        assert mirror.hits[f"/{NEW}/sha256sum-amd64.txt"] == 1
        assert await k.version() == OLD  # staging does not touch the running binary
        assert await k.staged() == NEW
        await k.swap()
        assert await binary_version(binary) == NEW
        assert not staged_path(binary).exists()
        assert await binary_version(previous_path(binary)) == OLD
        assert await k.restore()
        assert await binary_version(binary) == OLD
        assert not await k.restore()  # only one previous binary is kept


async def test_a_tampered_release_is_refused_and_nothing_is_swapped(tmp_path: Path) -> None:
    write_mirror(tmp_path / "mirror", {NEW: release(NEW)})
    (tmp_path / "mirror" / NEW / "k3s").write_bytes(release(NEW) + b"# tampered\n")
    binary = tmp_path / "k3s"
    binary.write_bytes(release(OLD))
    binary.chmod(0o755)
    async with serve_mirror(tmp_path / "mirror") as mirror:
        k = K3sBinary(lambda: _cfg(binary, mirror.url))
        with pytest.raises(InstallError, match="checksum mismatch"):
            await k.stage(NEW)
        assert not staged_path(binary).exists()
        with pytest.raises(InstallError, match="nothing staged"):
            await k.swap()
    assert await binary_version(binary) == OLD


async def test_a_release_that_reports_another_version_is_refused(tmp_path: Path) -> None:
    # An airgap file not yet replaced by the new release: verified, but the wrong version.
    write_mirror(tmp_path / "mirror", {NEW: release(OLD)})
    binary = tmp_path / "k3s"
    binary.write_bytes(release(OLD))
    binary.chmod(0o755)
    async with serve_mirror(tmp_path / "mirror") as mirror:
        k = K3sBinary(lambda: _cfg(binary, mirror.url))
        with pytest.raises(InstallError, match=re.escape(f"reports {OLD}")):
            await k.stage(NEW)
    assert not staged_path(binary).exists()


async def test_version_of_something_that_is_not_k3s(tmp_path: Path) -> None:
    assert await binary_version(tmp_path / "missing") == ""
    script = tmp_path / "k3s"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    assert await binary_version(script) == ""
