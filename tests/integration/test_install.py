"""Installing k3s against a real HTTP server on loopback (never the internet).

The server plays a release mirror: ``/<version>/k3s`` and ``/<version>/sha256sum-<arch>.txt``,
with per-path overrides for failures. Every test checks what ends up at the final path: either
a verified executable, or nothing at all (and no temporary file left beside it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import stat
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from k3snoded.errors import InstallError
from k3snoded.install import InstallMode, InstallSpec, ensure_k3s

VERSION = "v1.31.4+k3s1"
BINARY = b"#!/bin/sh\necho 'k3s version v1.31.4+k3s1 (stand-in)'\n" + bytes(range(256)) * 4096
DIGEST = hashlib.sha256(BINARY).hexdigest()
OTHER = hashlib.sha256(b"something else").hexdigest()


@dataclass
class Mirror:
    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, list[int]] = field(default_factory=dict)  # path -> statuses to answer first
    stall: set[str] = field(default_factory=set)  # paths that never finish their body
    hits: Counter[str] = field(default_factory=Counter)
    raw: Counter[str] = field(default_factory=Counter)  # as sent, before percent-decoding
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends stalled responses

    def serve_release(self, version: str = VERSION, prefix: str = "") -> None:
        self.files[f"{prefix}/{version}/k3s"] = BINARY
        self.files[f"{prefix}/{version}/k3s-arm64"] = b"arm64 build"
        self.files[f"{prefix}/{version}/sha256sum-amd64.txt"] = (
            f"{OTHER}  k3s-airgap-images-amd64.tar\n{DIGEST}  k3s\n".encode()
        )


@pytest.fixture
async def mirror() -> AsyncIterator[Mirror]:
    m = Mirror()

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        m.hits[path] += 1
        m.raw[request.raw_path] += 1
        queued = m.status.get(path)
        if queued:
            return web.Response(status=queued.pop(0), text="injected failure")
        if path in m.stall:
            resp = web.StreamResponse()
            resp.content_length = len(BINARY)
            await resp.prepare(request)
            await resp.write(BINARY[:1000])
            await asyncio.wait_for(m.release.wait(), 5)
            return resp
        body = m.files.get(path)
        if body is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    m.base = f"http://{host}:{port}"
    try:
        yield m
    finally:
        m.release.set()
        await runner.cleanup()


def spec(m: Mirror, **kw: object) -> InstallSpec:
    args: dict[str, object] = {
        "mode": InstallMode.AUTO,
        "version": VERSION,
        "mirror": m.base,
        "arch": "amd64",
        "attempts": 3,
        "retry_delay": 0.01,
        "read_timeout": 2.0,
    }
    args.update(kw)
    return InstallSpec(**args)  # type: ignore[arg-type]


def assert_nothing_left(binary: Path) -> None:
    assert not binary.exists()
    assert list(binary.parent.iterdir()) == [], "a temporary file was left behind"


async def test_download_verified_and_executable(mirror: Mirror, tmp_path: Path) -> None:
    mirror.serve_release()
    binary = tmp_path / "bin" / "k3s"
    assert await ensure_k3s(spec(mirror), binary) == binary
    assert binary.read_bytes() == BINARY
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    assert [p.name for p in binary.parent.iterdir()] == ["k3s"]
    # The list is fetched before the binary, each once.
    assert mirror.hits[f"/{VERSION}/sha256sum-amd64.txt"] == 1
    assert mirror.hits[f"/{VERSION}/k3s"] == 1


async def test_checksum_mismatch_refuses_and_discards(mirror: Mirror, tmp_path: Path) -> None:
    mirror.serve_release()
    mirror.files[f"/{VERSION}/k3s"] = BINARY + b"tampered"
    actual = hashlib.sha256(BINARY + b"tampered").hexdigest()
    binary = tmp_path / "k3s"
    with pytest.raises(InstallError) as err:
        await ensure_k3s(spec(mirror), binary)
    msg = str(err.value)
    assert "checksum mismatch" in msg
    assert f"expected sha256 {DIGEST}" in msg
    assert f"got {actual}" in msg
    assert_nothing_left(binary)


async def test_missing_checksum_line_refuses_before_download(
    mirror: Mirror, tmp_path: Path
) -> None:
    mirror.serve_release()
    mirror.files[f"/{VERSION}/sha256sum-amd64.txt"] = f"{OTHER}  k3s-arm64\n".encode()
    binary = tmp_path / "k3s"
    with pytest.raises(InstallError, match="has no sha256 line for k3s"):
        await ensure_k3s(spec(mirror), binary)
    assert mirror.hits[f"/{VERSION}/k3s"] == 0
    assert_nothing_left(binary)


async def test_http_404_is_not_retried(mirror: Mirror, tmp_path: Path) -> None:
    binary = tmp_path / "k3s"  # nothing served: the list answers 404
    with pytest.raises(InstallError, match=r"sha256sum-amd64\.txt: HTTP 404"):
        await ensure_k3s(spec(mirror, version="v9.9.9+k3s1"), binary)
    assert mirror.hits["/v9.9.9+k3s1/sha256sum-amd64.txt"] == 1
    assert_nothing_left(binary)


async def test_binary_404_after_list(mirror: Mirror, tmp_path: Path) -> None:
    mirror.serve_release()
    del mirror.files[f"/{VERSION}/k3s"]
    binary = tmp_path / "k3s"
    with pytest.raises(InstallError, match="HTTP 404"):
        await ensure_k3s(spec(mirror), binary)
    assert_nothing_left(binary)


async def test_server_errors_are_retried_then_succeed(mirror: Mirror, tmp_path: Path) -> None:
    mirror.serve_release()
    mirror.status[f"/{VERSION}/k3s"] = [503, 502]
    binary = tmp_path / "k3s"
    await ensure_k3s(spec(mirror, attempts=3), binary)
    assert binary.read_bytes() == BINARY
    assert mirror.hits[f"/{VERSION}/k3s"] == 3


async def test_retries_are_bounded(mirror: Mirror, tmp_path: Path) -> None:
    mirror.serve_release()
    mirror.status[f"/{VERSION}/k3s"] = [500] * 10
    binary = tmp_path / "k3s"
    with pytest.raises(InstallError, match=r"after 2 attempt\(s\)"):
        await ensure_k3s(spec(mirror, attempts=2), binary)
    assert mirror.hits[f"/{VERSION}/k3s"] == 2
    assert_nothing_left(binary)


async def test_stalled_body_times_out(mirror: Mirror, tmp_path: Path) -> None:
    mirror.serve_release()
    mirror.stall.add(f"/{VERSION}/k3s")
    binary = tmp_path / "k3s"
    with pytest.raises(InstallError, match=r"after 2 attempt\(s\)"):
        await ensure_k3s(spec(mirror, attempts=2, read_timeout=0.3), binary)
    assert_nothing_left(binary)


async def test_cn_mirror_layout(mirror: Mirror, tmp_path: Path) -> None:
    mirror.serve_release(version="v1.31.4-k3s1", prefix="/k3s")
    binary = tmp_path / "k3s"
    await ensure_k3s(spec(mirror, mirror=f"{mirror.base}/k3s/{{version_dashed}}"), binary)
    assert binary.read_bytes() == BINARY
    assert mirror.hits["/k3s/v1.31.4-k3s1/k3s"] == 1


async def test_arm64_asset_and_list(mirror: Mirror, tmp_path: Path) -> None:
    arm = b"arm64 build"
    mirror.files[f"/{VERSION}/k3s-arm64"] = arm
    mirror.files[f"/{VERSION}/sha256sum-arm64.txt"] = (
        f"{hashlib.sha256(arm).hexdigest()}  k3s-arm64\n".encode()
    )
    binary = tmp_path / "k3s"
    await ensure_k3s(spec(mirror, arch="arm64"), binary)
    assert binary.read_bytes() == arm


async def test_existing_binary_is_used_as_is(mirror: Mirror, tmp_path: Path) -> None:
    binary = tmp_path / "k3s"
    binary.write_bytes(b"operator's k3s")
    binary.chmod(0o755)
    assert await ensure_k3s(spec(mirror), binary) == binary
    assert binary.read_bytes() == b"operator's k3s"
    assert sum(mirror.hits.values()) == 0


async def test_mode_none_refuses_a_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"k3s\.install is 'none'"):
        await ensure_k3s(InstallSpec(), tmp_path / "k3s")


async def test_airgap_file_verified_against_local_list(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "k3s").write_bytes(BINARY)
    (bundle / "sha256sum-amd64.txt").write_text(f"{DIGEST}  k3s\n")
    binary = tmp_path / "bin" / "k3s"
    s = InstallSpec(
        mode=InstallMode.AUTO,
        arch="amd64",
        airgap_file=bundle / "k3s",
        airgap_sha256_file=bundle / "sha256sum-amd64.txt",
        mirror="http://127.0.0.1:9/never-used",
    )
    await ensure_k3s(s, binary)
    assert binary.read_bytes() == BINARY
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755


async def test_airgap_mismatch_refuses(tmp_path: Path) -> None:
    (tmp_path / "k3s.local").write_bytes(BINARY)
    (tmp_path / "sums.txt").write_text(f"{OTHER}  k3s\n")
    binary = tmp_path / "bin" / "k3s"
    s = InstallSpec(
        mode=InstallMode.AUTO,
        arch="amd64",
        airgap_file=tmp_path / "k3s.local",
        airgap_sha256_file=tmp_path / "sums.txt",
    )
    with pytest.raises(InstallError, match=f"expected sha256 {OTHER}, got {DIGEST}"):
        await ensure_k3s(s, binary)
    assert_nothing_left(binary)


async def test_airgap_without_list_installs_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "k3s.local").write_bytes(BINARY)
    binary = tmp_path / "bin" / "k3s"
    s = InstallSpec(mode=InstallMode.AUTO, arch="amd64", airgap_file=tmp_path / "k3s.local")
    with caplog.at_level(logging.WARNING, logger="k3snoded.install"):
        await ensure_k3s(s, binary)
    assert binary.read_bytes() == BINARY
    assert "not verified" in caplog.text


async def test_airgap_file_missing(tmp_path: Path) -> None:
    s = InstallSpec(mode=InstallMode.AUTO, arch="amd64", airgap_file=tmp_path / "nope")
    with pytest.raises(InstallError, match="does not exist"):
        await ensure_k3s(s, tmp_path / "bin" / "k3s")


async def test_armhf_uses_the_arm_digest_list(mirror: Mirror, tmp_path: Path) -> None:
    armhf = b"armhf build"
    mirror.files[f"/{VERSION}/k3s-armhf"] = armhf
    mirror.files[f"/{VERSION}/sha256sum-arm.txt"] = (
        f"{hashlib.sha256(armhf).hexdigest()}  k3s-armhf\n".encode()
    )
    binary = tmp_path / "k3s"
    await ensure_k3s(spec(mirror, arch="armhf"), binary)
    assert binary.read_bytes() == armhf
    assert mirror.raw[f"/{VERSION.replace('+', '%2B')}/k3s-armhf"] == 1  # '+' URL-encoded


async def test_s390x_is_refused_with_a_reason(mirror: Mirror, tmp_path: Path) -> None:
    binary = tmp_path / "k3s"
    with pytest.raises(InstallError, match="no s390x"):
        await ensure_k3s(spec(mirror, arch="s390x"), binary)
    assert sum(mirror.hits.values()) == 0  # said so, instead of a 404
    assert_nothing_left(binary)


async def test_shipped_digest_beats_the_mirrors_own_list(mirror: Mirror, tmp_path: Path) -> None:
    """A compromised or plain-http mirror serving a binary and a list that matches it: the
    digest that ships with k3snoded for the pinned version decides."""
    evil = b"#!/bin/sh\necho pwned\n"
    mirror.files[f"/{VERSION}/k3s"] = evil
    mirror.files[f"/{VERSION}/sha256sum-amd64.txt"] = (
        f"{hashlib.sha256(evil).hexdigest()}  k3s\n".encode()
    )
    binary = tmp_path / "k3s"
    shipped = ((VERSION, "k3s", DIGEST),)
    with pytest.raises(InstallError, match="checksum mismatch"):
        await ensure_k3s(spec(mirror, shipped=shipped), binary)
    assert_nothing_left(binary)
    assert mirror.hits[f"/{VERSION}/sha256sum-amd64.txt"] == 0  # the mirror's list is not asked
    mirror.files[f"/{VERSION}/k3s"] = BINARY
    await ensure_k3s(spec(mirror, shipped=shipped), binary)
    assert binary.read_bytes() == BINARY
