"""The daemon never dumps core (the token and the DB password are in its memory); k3s still can.

Observed, not assumed: processes are started with RLIMIT_CORE unlimited in their own working
directory (the kernel's core_pattern here is a relative "core" file name), and killed with
SIGABRT. A dumpable process leaves a core file there; ours must not, and what it execs must.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATTERN = Path("/proc/sys/kernel/core_pattern").read_text().strip()

pytestmark = pytest.mark.skipif(
    PATTERN.startswith("|") or "/" in PATTERN,
    reason=f"core_pattern {PATTERN!r} does not write into the working directory",
)


def _unlimited_cores() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _cores(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith("core")]


def _abort_in(directory: Path, code: str) -> subprocess.CompletedProcess[str]:
    directory.mkdir()
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=directory,
        preexec_fn=_unlimited_cores,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def test_the_control_case_dumps_core(tmp_path: Path) -> None:
    """Without forbid_core_dumps() the same abort does leave a core: the test can fail."""
    res = _abort_in(tmp_path / "plain", "import os; os.abort()")
    assert res.returncode == -signal.SIGABRT
    assert _cores(tmp_path / "plain"), "a plain process must dump core here"


def test_forbidden_for_us_not_for_what_we_exec(tmp_path: Path) -> None:
    child_dir = tmp_path / "child"
    child_dir.mkdir()
    code = f"""
import os, resource, subprocess, sys
from k3snoded.coredump import dumpable, forbid_core_dumps
assert forbid_core_dumps()
assert not dumpable()
assert resource.getrlimit(resource.RLIMIT_CORE)[0] == resource.RLIM_INFINITY  # untouched
child = subprocess.run([sys.executable, "-c", "import os; os.abort()"], cwd={str(child_dir)!r})
print("child", child.returncode, flush=True)
os.abort()
"""
    res = _abort_in(tmp_path / "daemon", code)
    assert "child -6" in res.stdout, res.stdout + res.stderr
    assert res.returncode == -signal.SIGABRT
    assert _cores(tmp_path / "daemon") == [], "the non-dumpable process dumped core"
    assert _cores(child_dir), "the exec'd child (k3s) lost its core dumps"
