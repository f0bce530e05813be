"""write_atomic: final content and mode, no temporary files left, failures clean up."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from k3snoded.atomic import read_json_state, write_atomic, write_json_state


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_creates_file_with_mode_and_content(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    write_atomic(target, b"hello\n")
    assert target.read_bytes() == b"hello\n"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_write_replaces_and_fixes_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content that is longer")
    target.chmod(0o644)
    write_atomic(target, b"new", mode=0o640)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "f", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f") == 0o644


def test_failure_leaves_no_temp_and_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    (target / "child").write_text("x")
    with pytest.raises(OSError):
        write_atomic(target, b"data")  # cannot rename a file over a non-empty directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-in-the-way"]


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "f", b"x")


def test_json_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert read_json_state(path) is None
    write_json_state(path, {"role": "server", "n": 3})
    assert read_json_state(path) == {"role": "server", "n": 3}
    assert _mode(path) == 0o600


@pytest.mark.parametrize("content", [b"", b"{", b"[1, 2]", b"\xff\xfe", b"null"])
def test_damaged_json_state_is_absent(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    assert read_json_state(path) is None
