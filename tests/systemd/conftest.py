"""Fixtures of the systemd lab: the .deb (built once), Debian roots, booted fleets.

``make systemd-lab`` runs everything here; ``K3SNODED_SYSTEMD_SUITES=debian12`` limits the
distributions; ``K3SNODED_TEST_DIST=DIR`` tests a .deb already built there.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab import dbs
from tests.lab.netns import Lab
from tests.systemd import node as nodes
from tests.systemd.nspawn import REPO, SUITES, Booted, SystemdLab, need_systemd_lab_tools

BUILD_TIMEOUT = 900


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "systemd_lab: boots Debian containers with systemd as PID 1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.systemd_lab)


def suites() -> list[str]:
    wanted = os.environ.get("K3SNODED_SYSTEMD_SUITES", ",".join(SUITES))
    return [s for s in wanted.split(",") if s]


def skip_unless_possible() -> None:
    why = need_systemd_lab_tools()
    if why is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


@dataclass(frozen=True)
class Debs:
    deb: Path
    newer: Path  # the same package as <version>+test1
    version: str
    newer_version: str


def _version() -> str:
    return subprocess.run(
        ["bash", "-c", '. packaging/meta.sh && printf %s "$PKG_VERSION"'],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def _build(dist: Path, suffix: str = "") -> None:
    proc = subprocess.run(
        ["packaging/build.sh"],
        cwd=REPO,
        env={
            **os.environ,
            "DIST": str(dist),
            "PKG_FORMATS": "deb",
            "K3SNODED_VERSION_SUFFIX": suffix,
        },
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"build failed:\n{proc.stderr}"


def _newer(deb: Path, out_dir: Path, version: str) -> tuple[Path, str]:
    """The same package with version <version>+test1 (repacked: no second build)."""
    tree = out_dir / "newer-tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=120)
    newer = f"{version}+test1"
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(f"Version: {version}\n", f"Version: {newer}\n"))
    out = out_dir / f"k3snoded_{newer}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out, newer


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    skip_unless_possible()
    version = _version()
    given = os.environ.get("K3SNODED_TEST_DIST")
    dist = Path(given) if given else tmp_path_factory.mktemp("systemd-dist")
    found = sorted(dist.glob(f"k3snoded_{version}_*.deb"))
    if not found:
        _build(dist)
        found = sorted(dist.glob(f"k3snoded_{version}_*.deb"))
    assert found, f"no k3snoded_{version}_*.deb in {dist}"
    newer, newer_version = _newer(found[0], tmp_path_factory.mktemp("newer"), version)
    return Debs(found[0], newer, version, newer_version)


@dataclass
class Pair:
    """Two server-capable machines on PostgreSQL, formed by their units alone."""

    lab: Lab
    machines: list[Booted]
    db: dbs.Database
    suite: str

    def holder(self) -> Booted:
        held = [m for m in self.machines if nodes.holds_vip(m)]
        assert len(held) == 1, f"VIP holders: {[m.name for m in held]}"
        return held[0]

    def other(self, m: Booted) -> Booted:
        return next(x for x in self.machines if x is not m)


@pytest.fixture(scope="module", params=suites())
def pair(request: pytest.FixtureRequest, debs: Debs) -> Iterator[Pair]:
    suite = SUITES[request.param]
    lab = Lab(2, with_db=True).up()
    try:
        db = dbs.start(lab, "postgres")
        booted = SystemdLab(lab, suite).boot(lab.machines)
        spec = nodes.FleetSpec(endpoint=db.endpoint, servers=2)
        for m in booted:
            nodes.setup_node(m, debs.deb, spec)
        for m in booted:
            nodes.enable_now(m, no_block=True)
        p = Pair(lab, booted, db, request.param)
        for m in booted:
            m.wait(lambda m=m: _server_ready(m), 180, "a ready k3s server")  # type: ignore[misc]
        booted[0].wait(lambda: any(nodes.holds_vip(m) for m in booted), 30, "the VIP")
        yield p
    finally:
        lab.down()


def _server_ready(m: Booted) -> bool:
    s = nodes.status(m)
    return s is not None and s["node"]["role"] == "server" and bool(s["k3s"]["ready"])
