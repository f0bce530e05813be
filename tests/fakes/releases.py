"""Stand-in k3s *releases* and the release mirror that serves them (for upgrade tests).

A release is one executable file, like a real k3s binary: ``release(version)`` is a shell
script that runs the stand-in as that release (it reports ``version`` through ``--version``,
``/version`` and its Node's ``kubeletVersion``); ``broken_release(version)`` is a build that
answers ``--version`` but dies at once when started (a Go panic: exit 2), as a bad release
would. ``write_mirror(dir, {version: bytes})`` lays them out as k3s's GitHub releases are
(``<version>/k3s`` and ``<version>/sha256sum-amd64.txt``), which k3snoded's installer reads
through ``k3s.mirror``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

STANDIN = Path(__file__).resolve().parent / "k3s"
RELEASE_ENV = "_K3S_STANDIN_RELEASE"
ASSET = "k3s"  # amd64
DIGESTS = "sha256sum-amd64.txt"


def release(version: str) -> bytes:
    """The stand-in as release ``version``, one self-contained executable script."""
    return (
        "#!/bin/sh\n"
        f"# stand-in k3s release {version}\n"
        f"{RELEASE_ENV}='{version}'\n"
        f"export {RELEASE_ENV}\n"
        f'exec "{STANDIN}" "$@"\n'
    ).encode()


def broken_release(version: str) -> bytes:
    """A build of ``version`` that reports its version and panics as soon as it runs."""
    return (
        "#!/bin/sh\n"
        f"# stand-in k3s release {version}, a bad build\n"
        'case "$1" in --version|-v)\n'
        f"  echo 'k3s version {version} (badbuild)'; echo 'go version go1.22.9'; exit 0;;\n"
        "esac\n"
        "echo 'panic: runtime error: invalid memory address or nil pointer dereference' >&2\n"
        "echo '[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x0]' >&2\n"
        "exit 2\n"
    ).encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_mirror(root: Path, releases: Mapping[str, bytes]) -> None:
    """``<root>/<version>/k3s`` and its ``sha256sum-amd64.txt`` for every release."""
    for version, data in releases.items():
        d = root / version
        d.mkdir(parents=True, exist_ok=True)
        (d / ASSET).write_bytes(data)
        (d / DIGESTS).write_text(f"{digest(data)}  {ASSET}\n")
