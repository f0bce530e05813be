"""k3s release names: parsing, ordering, and what ``k3s --version`` prints. Pure.

A k3s release is ``v<major>.<minor>.<patch>[-<pre>]+k3s<n>`` (``v1.31.4+k3s1``,
``v1.32.0-rc2+k3s1``). Releases order by the Kubernetes version, a pre-release before its
release, then by the k3s build number. ``k3s --version`` prints
``k3s version v1.31.4+k3s1 (a1b2c3d4)`` and then ``go version go1.22.9``.

k3s's version-skew rule (Kubernetes'): a kubelet (every agent, and the agent side of a
server) must not be newer than the apiservers it talks to; servers are upgraded first.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_RELEASE = re.compile(
    r"^v(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+k3s(?P<build>\d+))?$"
)
_VERSION_LINE = re.compile(r"^k3s version (?P<release>\S+)(?: \((?P<commit>[^)]*)\))?\s*$")


@dataclass(frozen=True, order=True)
class Release:
    """A parsed release name; compares in release order."""

    major: int
    minor: int
    patch: int
    final: int  # 1 for a release, 0 for a pre-release (which comes first)
    pre: str
    build: int
    name: str = ""  # the text it was parsed from (not compared)

    def __str__(self) -> str:
        return self.name


@functools.lru_cache(maxsize=256)  # a fleet names a handful of releases, compared every cycle
def parse_release(text: str) -> Release | None:
    """The release named by ``text`` (``v1.31.4+k3s1``), or None when it is not one."""
    m = _RELEASE.match(text.strip())
    if m is None:
        return None
    pre = m.group("pre") or ""
    return Release(
        int(m.group("major")),
        int(m.group("minor")),
        int(m.group("patch")),
        0 if pre else 1,
        pre,
        int(m.group("build") or 0),
        text.strip(),
    )


def older(a: str, b: str) -> bool:
    """Whether release ``a`` comes before release ``b``; False when either is not a release."""
    ra, rb = parse_release(a), parse_release(b)
    return ra is not None and rb is not None and ra < rb


def parse_version_output(output: str) -> str | None:
    """The release in ``k3s --version`` output (its first line), or None."""
    for line in output.splitlines():
        m = _VERSION_LINE.match(line.strip())
        if m is not None and parse_release(m.group("release")) is not None:
            return m.group("release")
    return None


def oldest(versions: list[str]) -> str | None:
    """The oldest of the releases among ``versions`` (others ignored), or None."""
    parsed = [r for r in (parse_release(v) for v in versions) if r is not None]
    return str(min(parsed)) if parsed else None


def newest(versions: list[str]) -> str | None:
    """The newest of the releases among ``versions`` (others ignored), or None."""
    parsed = [r for r in (parse_release(v) for v in versions) if r is not None]
    return str(max(parsed)) if parsed else None
