"""Installing k3s itself: a pinned release from a mirror, or a local file on airgapped machines.

``ensure_k3s(spec, binary)`` returns the path of an executable k3s. A binary already there is
used as is (upgrading k3s is an operator's decision). A missing one is, with ``k3s.install:
auto``, downloaded for the pinned version from the release mirror, or copied from
``airgap_file``, and verified against the release's sha256 list **before** it can run: it is
written to a 0600 temporary file beside the final path, hashed while written, compared,
made 0755 and only then renamed into place atomically. A mismatch raises ``InstallError``
naming the expected and actual digests, and the bad file is deleted.

Mirror layout (``mirror`` is a base URL; ``{version}`` and ``{version_dashed}`` may appear in
it, otherwise ``/<version>`` is appended):

* GitHub releases (the default): ``<mirror>/v1.31.4+k3s1/k3s`` and ``.../sha256sum-amd64.txt``;
* the mirror for users in China that k3s's installer uses with ``INSTALL_K3S_MIRROR=cn``:
  ``https://rancher-mirror.rancher.cn/k3s/v1.31.4-k3s1/k3s`` (``+`` becomes ``-``), i.e.
  ``mirror: "https://rancher-mirror.rancher.cn/k3s/{version_dashed}"`` (``CN_MIRROR``);
* any other mirror: the ``+`` of the version is URL-encoded as ``%2B``, as install.sh does
  (a literal ``+`` in a path is a space to some servers).

Assets per architecture: ``k3s`` (amd64), ``k3s-arm64``, ``k3s-armhf``; the digest lists are
``sha256sum-amd64.txt``, ``sha256sum-arm64.txt`` and ``sha256sum-arm.txt`` (armhf: install.sh's
``ARCH=arm``), with ``<hex>  <asset>`` lines. k3s has published no s390x assets since 2023-12.

Where the expected digest comes from: for a release whose digests ship with k3snoded
(``k3s-sha256sums.txt`` beside this module, written by ``scripts/pin-k3s-digests``), from that
file, never from the mirror, so a compromised or plain-http mirror cannot serve a binary and
its own digest. Otherwise from the mirror's list (a warning says so when it comes over http).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import platform
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from k3snoded.config import K3sConfig
from k3snoded.errors import InstallError
from k3snoded.model import InstallMode

if TYPE_CHECKING:
    import aiohttp

__all__ = ["InstallMode", "InstallSpec", "ensure_k3s", "install_release", "spec_from_config"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_VERSION = K3sConfig.version  # the pinned release: one place, the config default
GITHUB_MIRROR = K3sConfig.mirror
CN_MIRROR = "https://rancher-mirror.rancher.cn/k3s/{version_dashed}"
MAX_BINARY_BYTES = 512 * 1024 * 1024  # k3s is ~70 MB; bounds a runaway or hostile response
MAX_LIST_BYTES = 1024 * 1024
_CHUNK = 256 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MACHINE_TO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armhf",
    "armv7": "armhf",
    "armhf": "armhf",
    "arm": "armhf",
    "s390x": "s390x",
}
SHIPPED_DIGESTS = Path(__file__).with_name("k3s-sha256sums.txt")
Shipped = tuple[tuple[str, str, str], ...]  # (version, asset, sha256)


@dataclass(frozen=True)
class InstallSpec:
    """How to obtain k3s when the binary is missing (``k3s.install`` and friends in the config)."""

    mode: InstallMode = InstallMode.NONE
    version: str = DEFAULT_VERSION
    mirror: str = GITHUB_MIRROR
    airgap_file: Path | None = None  # a local k3s binary (airgapped machines)
    airgap_sha256_file: Path | None = None  # a local sha256sum-<arch>.txt to verify it against
    arch: str = ""  # "" = this machine's: amd64, arm64, armhf, s390x
    shipped: Shipped | None = None  # None: the digests that ship with k3snoded
    attempts: int = 3  # per URL; 4xx answers are not retried
    retry_delay: float = 2.0  # seconds, doubled after each failed attempt
    connect_timeout: float = 15.0
    read_timeout: float = 60.0  # longest silence while reading
    total_timeout: float = 900.0  # one whole attempt


def machine_arch(machine: str | None = None) -> str:
    """k3s's name for this machine's architecture (``uname -m`` → amd64, arm64, armhf, s390x)."""
    m = (machine if machine is not None else platform.machine()).lower()
    try:
        return _MACHINE_TO_ARCH[m]
    except KeyError:
        raise InstallError(f"k3s is not released for this machine's architecture {m!r}") from None


def asset_name(arch: str) -> str:
    """The release asset of the k3s binary for ``arch``: ``k3s`` for amd64, else ``k3s-<arch>``."""
    return "k3s" if arch == "amd64" else f"k3s-{arch}"


def digest_list_name(arch: str) -> str:
    """The release's sha256 list for ``arch``: ``sha256sum-arm.txt`` for armhf."""
    return f"sha256sum-{'arm' if arch == 'armhf' else arch}.txt"


def release_url(mirror: str, version: str, name: str) -> str:
    """The URL of one release asset (see the module docstring for the layouts)."""
    base = mirror.rstrip("/")
    if not base.startswith(GITHUB_MIRROR.rsplit("/releases", 1)[0]):
        version = version.replace("+", "%2B")  # install.sh does so for other hosts
    if "{version}" in base or "{version_dashed}" in base:
        base = base.replace("{version_dashed}", version.replace("%2B", "-"))
        base = base.replace("{version}", version)
    else:
        base = f"{base}/{version}"
    return f"{base}/{name}"


def read_shipped(path: Path = SHIPPED_DIGESTS) -> Shipped:
    """The digests that ship with k3snoded: ``<version> <sha256> <asset>`` lines, # comments."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ()
    out = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) == 3 and _SHA256.match(parts[1].lower()):
            out.append((parts[0], parts[2], parts[1].lower()))
    return tuple(out)


def shipped_digest(shipped: Shipped, version: str, name: str) -> str | None:
    for v, asset, digest in shipped:
        if v == version and asset == name:
            return digest
    return None


def expected_digest(checksums: str, name: str, source: str) -> str:
    """The sha256 for ``name`` in a ``sha256sum`` list; InstallError when it has no such line."""
    for line in checksums.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        digest, file = parts[0].lower(), parts[1].lstrip("*")
        if file == name:
            if not _SHA256.match(digest):
                raise InstallError(f"{source}: the line for {name} has no valid sha256: {line!r}")
            return digest
    raise InstallError(f"{source} has no sha256 line for {name}; refusing to install it unverified")


async def ensure_k3s(spec: InstallSpec, binary: Path) -> Path:
    """Return ``binary`` once it is an executable k3s, installing a verified one if allowed.

    Raises InstallError when the binary is missing and ``spec.mode`` is NONE, when the
    download fails after ``spec.attempts`` tries (or at once on a 4xx answer), when a checksum
    list has no line for the asset, or when the digest does not match. Nothing is left at
    ``binary`` after a failure.
    """
    if await asyncio.to_thread(_executable, binary):
        log.debug("k3s is at %s", binary)
        return binary
    if spec.mode is InstallMode.NONE:
        raise InstallError(
            f"k3s is not installed at {binary} (or is not executable) and k3s.install is 'none'; "
            "install k3s there or set k3s.install: auto"
        )
    await install_release(spec, binary)
    return binary


async def install_release(spec: InstallSpec, binary: Path) -> None:
    """Install ``spec.version`` at ``binary`` whatever is there (a rolling upgrade stages the
    new release beside the running one this way): verified first, renamed into place
    atomically; nothing is left at ``binary``'s temporary name after a failure."""
    arch = spec.arch or machine_arch()
    if arch == "s390x":
        raise InstallError(
            "k3s has published no s390x release since 2023-12; install a k3s built for this "
            f"machine at {binary} and set k3s.install: none"
        )
    name = asset_name(arch)
    list_name = digest_list_name(arch)
    if spec.airgap_file is not None:
        await _install_airgap(spec, binary, name, list_name)
    else:
        await _install_download(spec, binary, name, list_name)


async def _install_airgap(spec: InstallSpec, binary: Path, name: str, list_name: str) -> None:
    src = spec.airgap_file
    assert src is not None
    if not src.is_file():
        raise InstallError(f"k3s.airgap_file {src} does not exist")
    expected: str | None = None
    if spec.airgap_sha256_file is not None:
        try:
            text = await asyncio.to_thread(spec.airgap_sha256_file.read_text)
        except OSError as exc:
            raise InstallError(f"cannot read {spec.airgap_sha256_file}: {exc}") from exc
        # An airgap bundle keeps the release's names; a list naming the file itself also works.
        try:
            expected = expected_digest(text, name, str(spec.airgap_sha256_file))
        except InstallError:
            expected = expected_digest(text, src.name, str(spec.airgap_sha256_file))
    else:
        log.warning("installing k3s from %s without a sha256 list: it is not verified", src)
    with _staged(binary) as (tmp, out):
        digest = await asyncio.to_thread(_copy_hashing, src, out)
        _verify(expected, digest, str(src))
        await asyncio.to_thread(_commit, tmp, out, binary)
    log.info("installed k3s from %s at %s (sha256 %s)", src, binary, digest)


async def _install_download(spec: InstallSpec, binary: Path, name: str, list_name: str) -> None:
    # aiohttp only here, for a download (redirects, proxies, streaming to disk): importing it
    # costs the daemon ~16 MB and ~0.12 CPU-s that a machine with its k3s in place never needs.
    import aiohttp

    list_url = release_url(spec.mirror, spec.version, list_name)
    url = release_url(spec.mirror, spec.version, name)
    timeout = aiohttp.ClientTimeout(
        total=spec.total_timeout, sock_connect=spec.connect_timeout, sock_read=spec.read_timeout
    )
    shipped = spec.shipped if spec.shipped is not None else await asyncio.to_thread(read_shipped)
    pinned = shipped_digest(shipped, spec.version, name)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as session:
        if pinned is not None:
            expected = pinned
            log.info("verifying k3s %s against the digest shipped with k3snoded", spec.version)
        else:
            if list_url.startswith("http://"):
                log.warning(
                    "no digest of k3s %s ships with k3snoded and %s is plain http: the mirror's "
                    "own list is all that vouches for the binary",
                    spec.version,
                    list_url,
                )
            raw = await _retrying(spec, list_url, lambda: _fetch_small(session, list_url))
            expected = expected_digest(raw.decode("utf-8", "replace"), name, list_url)
        log.info("downloading k3s %s from %s", spec.version, url)
        with _staged(binary) as (tmp, out):
            digest = await _retrying(spec, url, lambda: _fetch_to(session, url, out))
            _verify(expected, digest, url)
            await asyncio.to_thread(_commit, tmp, out, binary)
    log.info("installed k3s %s at %s (sha256 %s)", spec.version, binary, digest)


class _Permanent(Exception):
    """A failure that retrying cannot fix (a 4xx answer, a response over the size bound)."""


async def _retrying(spec: InstallSpec, url: str, attempt: Callable[[], Awaitable[T]]) -> T:
    import aiohttp  # loaded already by _install_download, its only caller

    delay = spec.retry_delay
    tries = max(1, spec.attempts)
    for n in range(1, tries + 1):
        try:
            return await attempt()
        except _Permanent as exc:
            raise InstallError(f"cannot download {url}: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            if n == tries:
                raise InstallError(
                    f"cannot download {url} after {tries} attempt(s): {reason}"
                ) from exc
            log.warning("download of %s failed (attempt %s of %s): %s", url, n, tries, reason)
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def _get(session: aiohttp.ClientSession, url: str) -> AsyncIterator[aiohttp.ClientResponse]:
    async with session.get(url) as resp:
        if 400 <= resp.status < 500:
            raise _Permanent(f"HTTP {resp.status} {resp.reason or ''}".strip())
        resp.raise_for_status()  # 5xx: ClientResponseError, retried
        yield resp


async def _fetch_small(session: aiohttp.ClientSession, url: str) -> bytes:
    async with _get(session, url) as resp:
        data = await resp.content.read(MAX_LIST_BYTES + 1)
        if len(data) > MAX_LIST_BYTES:
            raise _Permanent(f"the checksum list is larger than {MAX_LIST_BYTES} bytes")
        return data


async def _fetch_to(session: aiohttp.ClientSession, url: str, out: BinaryIO) -> str:
    """Stream ``url`` into ``out`` (truncated first, so a retry starts clean); return its sha256."""
    await asyncio.to_thread(_rewind, out)
    h = hashlib.sha256()
    size = 0
    async with _get(session, url) as resp:
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > MAX_BINARY_BYTES:
                raise _Permanent(f"the response is larger than {MAX_BINARY_BYTES} bytes")
            h.update(chunk)
            await asyncio.to_thread(out.write, chunk)
    return h.hexdigest()


def _executable(binary: Path) -> bool:
    """True for an executable regular file; InstallError for something else in the way."""
    if binary.is_file():
        return os.access(binary, os.X_OK)
    if binary.exists():
        raise InstallError(f"{binary} exists but is not a regular file")
    return False


def _verify(expected: str | None, actual: str, source: str) -> None:
    if expected is not None and actual != expected:
        raise InstallError(
            f"checksum mismatch for {source}: expected sha256 {expected}, got {actual}; "
            "the file was discarded"
        )


@contextlib.contextmanager
def _staged(binary: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A 0600 temporary file beside ``binary``; removed unless ``_commit`` renamed it."""
    try:
        binary.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=binary.parent, prefix=f".{binary.name}.download.")
    except OSError as exc:
        raise InstallError(f"cannot write beside {binary}: {exc}") from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w+b") as out:
            yield tmp, out
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _rewind(out: BinaryIO) -> None:
    out.seek(0)
    out.truncate()


def _copy_hashing(src: Path, out: BinaryIO) -> str:
    h = hashlib.sha256()
    with src.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _commit(tmp: Path, out: BinaryIO, binary: Path) -> None:
    """Make the verified file durable and executable, then rename it over ``binary``."""
    out.flush()
    os.fsync(out.fileno())
    os.fchmod(out.fileno(), 0o755)
    os.replace(tmp, binary)
    dirfd = os.open(binary.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def spec_from_config(k3s: K3sConfig, version: str | None = None) -> InstallSpec:
    """The install spec the ``k3s:`` section of the config describes (for ``version``, when
    given: the release a rollout installs)."""
    return InstallSpec(
        mode=k3s.install,
        version=version or k3s.version,
        mirror=k3s.mirror,
        airgap_file=k3s.airgap_file,
        airgap_sha256_file=k3s.airgap_sha256_file,
    )
