"""Fixtures for the package tests: build the .deb and .rpm once per session.

Select these tests with ``-m packaging`` (deselect with ``-m 'not packaging'``). Set
``K3SNODED_TEST_DIST=DIR`` to test packages already built there (``DIST=DIR make package``)
instead of building them again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 900


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "packaging: builds and checks the .deb/.rpm, installs the .deb (root)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.packaging)


@dataclass(frozen=True)
class Built:
    deb: Path
    rpm: Path
    version: str


def meta(var: str) -> str:
    """One value from packaging/meta.sh, read the way build.sh reads it."""
    out = subprocess.run(
        ["bash", "-c", f'. packaging/meta.sh && printf %s "${{{var}}}"'],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/setup.sh installs them)")


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    need_tools("dpkg-deb", "rpmbuild", "strip")
    version = meta("PKG_VERSION")
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()
    machine = os.uname().machine
    given = os.environ.get("K3SNODED_TEST_DIST")
    dist = Path(given) if given else tmp_path_factory.mktemp("dist")
    deb = dist / f"k3snoded_{version}_{arch}.deb"
    rpm = dist / f"k3snoded-{version}-1.{machine}.rpm"
    if not (given and deb.exists() and rpm.exists()):
        proc = subprocess.run(
            ["packaging/build.sh"],
            check=False,
            cwd=REPO,
            env={**os.environ, "DIST": str(dist)},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
        assert proc.returncode == 0, f"build failed:\n{proc.stdout}\n{proc.stderr}"
    assert deb.is_file(), deb
    assert rpm.is_file(), rpm
    return Built(deb=deb, rpm=rpm, version=version)
