"""node.run_dir cannot make the daemon chmod a shared directory to 0700 (issue 13).

The daemon makes its run_dir 0700 (the control socket's directory). Pointed at /run or /tmp, or
any directory others may write (sticky or world-writable), that chmod would lock every other
program out of it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from k3snoded.api import ApiServer
from k3snoded.errors import K3snodedError
from tests.unit.test_config_support import ConfigDir


@pytest.mark.parametrize(
    "run_dir", ["/run", "/tmp", "/var/run/", "/", "/etc", "/var/lib", "/dev/shm"]
)
def test_shared_system_directories_are_refused(tmp_path: Path, run_dir: str) -> None:
    d = ConfigDir(tmp_path)
    cfg = d.fleet()
    cfg["node"] = {"run_dir": run_dir}
    d.write(cfg)
    problems = d.problems()
    assert [p.key for p in problems] == ["node.run_dir"]
    assert "shared" in problems[0].reason


def test_a_world_writable_or_sticky_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    d = ConfigDir(tmp_path)
    cfg = d.fleet()
    cfg["node"] = {"run_dir": str(shared)}
    d.write(cfg)
    problems = d.problems()
    assert [p.key for p in problems] == ["node.run_dir"]
    assert "writable by others" in problems[0].reason


def test_a_dedicated_directory_is_fine(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    cfg = d.fleet()
    cfg["node"] = {"run_dir": str(tmp_path / "run" / "k3snoded")}
    d.write(cfg)
    assert d.load().node.run_dir == tmp_path / "run" / "k3snoded"


async def test_the_daemon_never_chmods_a_shared_directory(tmp_path: Path) -> None:
    """Even if the directory became shared after the config was checked."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    api = ApiServer(
        socket_path=shared / "k3snoded.sock",
        status=dict,
        metrics=str,
        healthy=lambda: True,
    )
    with pytest.raises(K3snodedError, match="writable by others"):
        await api.start()
    await api.close()
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777


async def test_the_daemon_makes_its_own_directory_private(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    api = ApiServer(
        socket_path=run / "k3snoded.sock", status=dict, metrics=str, healthy=lambda: True
    )
    await api.start()
    try:
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
    finally:
        await api.close()
