"""The .deb on this machine: install, run, reinstall, upgrade, remove, purge.

What an operator does and what they must be able to rely on: conffiles they edited survive
reinstall and upgrade, their own config.yaml and token are never touched, remove keeps
configuration and state, purge removes k3snoded's state. The package is purged and the test's
files are removed at the end, also on failure. One test at a time per machine (a lock file),
and only on a machine where k3snoded is not installed and /etc/k3snoded does not exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO, Built, need_tools

pytestmark = pytest.mark.timeout(900)

ETC = Path("/etc/k3snoded")
STATE = Path("/var/lib/k3snoded")
DEFAULTS = Path("/etc/default/k3snoded")
EXAMPLE = ETC / "config.yaml.example"
LOCK = Path("/run/lock/k3snoded-package-test.lock")
# Exists exactly while this test has the package installed: a run killed before its cleanup
# (SIGKILL, `timeout`) leaves it behind, and the next run, holding the lock, cleans up after it.
STAMP = Path("/run/lock/k3snoded-package-test.installed")
APT = ["apt-get", "-y", "-o", "DPkg::Lock::Timeout=300"]


def run(*argv: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        check=False,
        stdin=subprocess.DEVNULL,  # a conffile prompt would fail, not hang
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def ok(*argv: str | Path) -> str:
    proc = run(*argv)
    assert proc.returncode == 0, f"{argv}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def status() -> str:
    proc = run("dpkg-query", "-W", "-f=${Status} ${Version}", "k3snoded")
    return proc.stdout.strip() if proc.returncode == 0 else "absent"


def installed_files() -> set[str]:
    return set(ok("dpkg", "-L", "k3snoded").split())


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as f:
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{LOCK} held for 10 minutes by another package test")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture
def clean_machine() -> Iterator[None]:
    """This machine without k3snoded, before and after (purged even if the test fails)."""
    need_tools("apt-get", "dpkg", "dpkg-deb", "systemd-analyze")
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root")
    with machine_lock():
        if STAMP.exists():  # left by a killed run of this test: its package and files only
            cleanup()
        st = status()
        if st != "absent" and not st.startswith("unknown ok not-installed"):
            pytest.skip(f"k3snoded is already installed here ({st}); not touching it")
        if ETC.exists() or STATE.exists():
            pytest.skip(f"{ETC} or {STATE} exists; not touching an operator's files")
        STAMP.write_text(f"{os.getpid()}\n")
        try:
            yield
        finally:
            cleanup()
            assert status() == "absent" or "not-installed" in status()


def cleanup() -> None:
    run(*APT, "purge", "k3snoded")
    shutil.rmtree(ETC, ignore_errors=True)
    shutil.rmtree(STATE, ignore_errors=True)
    STAMP.unlink(missing_ok=True)


def newer_package(built: Built, tmp_path: Path) -> tuple[Path, str]:
    """The same package as version <v>+test1, whose config.yaml.example changed upstream."""
    tree = tmp_path / "newer"
    ok("dpkg-deb", "-R", built.deb, tree)
    version = f"{built.version}+test1"
    control = tree / "DEBIAN/control"
    control.write_text(
        control.read_text().replace(f"Version: {built.version}\n", f"Version: {version}\n")
    )
    example = tree / "etc/k3snoded/config.yaml.example"
    example.write_text(example.read_text() + "# changed in the newer package\n")
    md5 = ok("md5sum", example).split()[0]
    sums = tree / "DEBIAN/md5sums"
    sums.write_text(
        "".join(
            f"{md5}  etc/k3snoded/config.yaml.example\n"
            if line.endswith("  etc/k3snoded/config.yaml.example")
            else line + "\n"
            for line in sums.read_text().splitlines()
        )
    )
    out = tmp_path / f"k3snoded_{version}.deb"
    ok("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", tree, out)
    return out, version


def test_deb_lifecycle(built: Built, clean_machine: None, tmp_path: Path) -> None:
    # -- install ------------------------------------------------------------------------------
    out = ok(*APT, "install", built.deb.resolve())
    assert status() == f"install ok installed {built.version}"
    assert "systemctl enable --now k3snoded" in out  # the hint; nothing was started
    assert ok("k3snoded", "--version").strip() == f"k3snoded {built.version}"
    assert ETC.stat().st_mode & 0o777 == 0o700
    assert STATE.stat().st_mode & 0o777 == 0o700
    assert EXAMPLE.is_file()
    assert DEFAULTS.is_file()

    # D7: the daemon's interpreter sees exactly the pinned versions, never Debian's python3-*.
    pins = dict(
        line.split("==")
        for line in (REPO / "requirements/runtime.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    probe = (
        "import importlib.metadata as m, sys; "
        "print(sys.prefix); "
        "[print(d.metadata['Name'], d.version) for d in m.distributions()]"
    )
    lines = ok("/opt/k3snoded/bin/python3.11", "-I", "-c", probe).splitlines()
    assert lines[0] == "/opt/k3snoded"
    shipped = {name.lower().replace("_", "-"): v for name, v in (ln.split() for ln in lines[1:])}
    for name, version in pins.items():
        assert shipped.get(name.lower().replace("_", "-")) == version, name

    # The installed unit verifies as is (its ExecStart now exists), without a word on stderr.
    verify = run("systemd-analyze", "verify", "--man=no", "/lib/systemd/system/k3snoded.service")
    assert verify.stderr == ""
    assert verify.returncode == 0

    # -- the operator's first steps -------------------------------------------------------------
    token = ETC / "token"
    ok("k3snoded", "token", "generate", "--output", token)
    assert token.stat().st_mode & 0o777 == 0o600
    config = ETC / "config.yaml"
    shutil.copy(EXAMPLE, config)
    config.chmod(0o600)
    check = run("k3snoded", "check-config", "--config", config)
    assert check.returncode == 0, f"check-config on the shipped example:\n{check.stderr}"
    check = run("k3snoded", "check-config", "--config", EXAMPLE)
    assert check.returncode == 0, check.stderr
    # postinst compiled the bytecode for this machine's interpreter (dpkg does not own it; the
    # package's scripts remove it), and running the command wrote nothing more there (-B).
    on_disk = {str(p) for p in Path("/opt/k3snoded").rglob("*")} | {"/opt/k3snoded"}
    compiled = {p for p in on_disk if "/__pycache__" in p}
    assert any(p.endswith(".cpython-311.pyc") and "/lib/common/k3snoded/" in p for p in compiled)
    assert on_disk - compiled <= installed_files()
    ok("k3snoded", "--version")
    assert {str(p) for p in Path("/opt/k3snoded").rglob("*")} | {"/opt/k3snoded"} == on_disk

    # -- operator edits ------------------------------------------------------------------------
    edited = DEFAULTS.read_text() + 'K3SNODED_ARGS="--config /etc/k3snoded/config.yaml"\n'
    DEFAULTS.write_text(edited)
    (STATE / "marker").write_text("node state")
    operator_config = config.read_bytes()
    operator_token = token.read_bytes()

    def operator_files_intact() -> None:
        assert config.read_bytes() == operator_config
        assert token.read_bytes() == operator_token

    # -- reinstall over itself: the edited conffile is kept ------------------------------------
    ok(*APT, "install", "--reinstall", built.deb.resolve())
    assert DEFAULTS.read_text() == edited
    assert (STATE / "marker").exists()
    operator_files_intact()

    # -- upgrade: edited conffile kept, untouched conffile updated, no prompt ------------------
    example_before = EXAMPLE.read_text()
    newer, version = newer_package(built, tmp_path)
    out = ok(*APT, "install", newer)
    assert status() == f"install ok installed {version}"
    assert DEFAULTS.read_text() == edited
    assert EXAMPLE.read_text() == example_before + "# changed in the newer package\n"
    assert (STATE / "marker").exists()
    operator_files_intact()
    assert "installed. Copy" not in out  # the first-install hint is for first installs only

    # -- remove: configuration and state stay ---------------------------------------------------
    ok(*APT, "remove", "k3snoded")
    assert status().startswith("deinstall ok config-files")
    assert not Path("/usr/bin/k3snoded").exists()
    assert not Path("/opt/k3snoded").exists()
    assert not Path("/lib/systemd/system/k3snoded.service").exists()
    assert DEFAULTS.read_text() == edited
    assert EXAMPLE.exists()
    assert (STATE / "marker").read_text() == "node state"
    operator_files_intact()

    # -- purge: k3snoded's state and conffiles go, the operator's own files stay -----------------
    out = ok(*APT, "purge", "k3snoded")
    assert status() == "absent" or "not-installed" in status()
    assert not STATE.exists()
    assert not DEFAULTS.exists()
    assert not EXAMPLE.exists()
    operator_files_intact()
    assert "kept your files in /etc/k3snoded" in out
