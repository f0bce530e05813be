"""node.run_dir must leave room for the unix sockets the daemon binds inside it."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_config_support import ConfigDir


def test_too_long_run_dir_is_rejected(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    cfg = d.fleet()
    cfg["node"] = {"run_dir": "/run/" + "x" * 100}
    d.write(cfg)
    problems = d.problems()
    assert [p.key for p in problems] == ["node.run_dir"]
    assert "too long for unix sockets" in problems[0].reason


def test_ordinary_run_dir_is_fine(tmp_path: Path) -> None:
    d = ConfigDir(tmp_path)
    cfg = d.fleet()
    cfg["node"] = {"run_dir": "/run/k3snoded"}
    d.write(cfg)
    assert d.load().node.run_dir == Path("/run/k3snoded")
